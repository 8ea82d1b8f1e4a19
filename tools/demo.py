"""`make demo`: a bundle built from public data, autlearnd learning from a simulated user's images, a report.

Builds the bundle, starts autlearnd under a development root (tools/harness.py), lets it learn from a simulated
private user's images, reports, and stops the daemon cleanly."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BIN, Daemon, client as control_client, move_in  # noqa: E402
from userdata import digits, write_user  # noqa: E402

from autlearn.errors import AutlearnError  # noqa: E402


def say(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def wait_for(what: str, check, timeout: float, interval: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", default="var/demo", help="development root (default var/demo)")
    ap.add_argument("--epochs", type=int, default=8, help="builder pretraining epochs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--degrade", type=float, default=1.0,
                    help="builder --degrade: low-resolution copies of the public images (the user scans coarsely)")
    args = ap.parse_args()
    root = Path(args.root).absolute()
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    inbox, staging, testdir = root / "inbox", root / "staging", root / "user-test"
    inbox.mkdir()

    say("1. cloud: autlearn-build pretrains on MNIST-5k (public) and exports an int8 bundle")
    t = time.monotonic()
    subprocess.run([str(BIN / "autlearn-build"), "image", "--data", "mnist5k", "--out", str(root / "bundle"),
                    "--epochs", str(args.epochs), "--seed", str(args.seed), "--degrade", str(args.degrade)],
                   check=True)
    print(f"   built in {time.monotonic() - t:.1f}s")

    say("2. the private user: UCI digits (other writers, other scanner), 30% kept aside as the user's test set")
    images, labels = digits(args.seed)
    n_test = int(0.3 * len(images))
    test_paths = write_user(testdir, images[:n_test], labels[:n_test], prefix="t")
    train_imgs, train_labels = images[n_test:], labels[n_test:]
    n_first = int(0.9 * len(train_imgs))
    write_user(staging / "first", train_imgs[:n_first], train_labels[:n_first], prefix="a")
    write_user(staging / "later", train_imgs[n_first:], train_labels[n_first:], prefix="b")
    print(f"   {len(test_paths)} test images; {n_first} + {len(train_imgs) - n_first} images to learn from")

    say("3. board: autlearnd starts under the development root, watching the inbox")
    daemon = Daemon(root, root / "bundle", debounce_s=1.0, training="min_new_samples = 50\nepochs = 30\n")
    client = control_client(root, timeout_s=5)

    def status():
        try:
            return client.call("status")
        except AutlearnError:
            if daemon.proc.poll() is not None:
                raise SystemExit(f"demo: autlearnd exited with {daemon.proc.returncode}; see {root / 'autlearnd.log'}")
            return None

    try:
        if not daemon.came_up(60):
            raise SystemExit(f"demo: autlearnd did not report READY; see {root / 'autlearnd.log'}")
        print(f"   READY after {daemon.ready_s:.2f}s")
        initial = status()["head"]["version"]

        say("4. the user's images land in the watched folder; the daemon ingests, extracts, trains, evaluates")
        move_in(staging / "first", inbox)  # whole folders appear at once

        def round_done(after_id=0):
            st = status()
            lr = st and st.get("last_round")
            return st if lr and lr["round_id"] > after_id and st["activity"] == "idle" else None

        st = wait_for("the first training round", round_done, 180)
        first = st["last_round"]

        say("5. 10% more images arrive: the second round computes features only for them")
        move_in(staging / "later", inbox)  # into the existing label folders, file by file
        st = wait_for("the second training round", lambda: round_done(first["round_id"]), 180)

        say("6. autlearnctl status")
        subprocess.run([str(BIN / "autlearnctl"), "--root", str(root), "status"], check=True)
        subprocess.run([str(BIN / "autlearnctl"), "--root", str(root), "versions"], check=True)

        say("7. the user's own test set (never seen by the daemon)")
        truth = np.array([int(p.parent.name) for p in test_paths])

        def test_accuracy(version: int) -> float:
            hits = 0
            for i in range(0, len(test_paths), 100):
                chunk = test_paths[i:i + 100]
                preds = client.predict_files(chunk, version=version)["predictions"]
                hits += sum(int(p["label"]) == t for p, t in zip(preds, truth[i:i + 100]))
            return hits / len(test_paths)

        current = status()["head"]["version"]
        before, after = test_accuracy(initial), test_accuracy(current)
        print(f"   pretrained (head v{initial}):   {100 * before:.1f}%")
        print(f"   personalised (head v{current}): {100 * after:.1f}%")
        print(f"   first round: {first['seconds']:.2f}s, {first['features_computed']} features computed; "
              f"second round: {st['last_round']['seconds']:.2f}s, {st['last_round']['features_computed']} computed, "
              f"{st['last_round']['features_cached']} from the cache")
        ok = after > before
        print(f"\n{'PASS' if ok else 'FAIL'}: personalised {'beats' if ok else 'does not beat'} pretrained "
              f"on the user's test set")
    finally:
        say("8. stopping the daemon (SIGTERM)")
        client.close()
        code = daemon.stop()
        print(f"   autlearnd exited with {code}; log: {root / 'autlearnd.log'}")
    return 0 if ok and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
