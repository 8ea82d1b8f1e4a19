"""The hostile file corpus and the `hostile_files` scenario that feeds it to a daemon's watched folder.

Broken images, bombs, FIFOs, sockets, devices, symlinks out of the tree, odd names, a 1,100-level tree and
mutated images: each must be learnt, quarantined or ignored with a reason, the user's folder left unchanged.
"""

from __future__ import annotations

import io
import os
import random
import socket
import stat
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from autlearn.intake.ingest import MAX_DEPTH, db_path
from faults import Tally
from harness import Daemon, call, max_round, proc_status, query, wait_round_after, wait_until
from userdata import png_bytes

MAX_FILE_MB = 1.0
MAX_PIXELS = 2_000_000
HOSTILE_DATA = f"max_file_mb = {MAX_FILE_MB}\nmax_pixels = {MAX_PIXELS}\n"
RSS_BOUND_MB = 150  # peak RSS (VmHWM) may grow this much over the idle daemon's RSS while it eats the corpus


# ---------------------------------------------------------------------------------------------- the corpus

def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(w: int, h: int) -> bytes:
    """A tiny PNG whose header declares w×h pixels (a decompression bomb's calling card)."""
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + _chunk(b"IEND", b""))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@dataclass
class Item:
    what: str
    path: Path
    expect: str  # ok | quarantined | ignored | absent | any (never a crash; quarantined, ignored or ok)
    reason: str = ""  # a word the recorded reason must contain


def build_corpus(inbox: Path, outside: Path, images: np.ndarray, labels: np.ndarray, rng: random.Random,
                 n_good: int = 40) -> list[Item]:
    """Write the hostile corpus (and `n_good` good files beside it) into `inbox`; return what is expected."""
    items: list[Item] = []

    def put(rel: str | bytes, data: bytes, expect: str, what: str, reason: str = "") -> Path:
        path = Path(os.fsdecode(os.path.join(os.fsencode(inbox), os.fsencode(rel))))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        items.append(Item(what, path, expect, reason))
        return path

    def special(rel: str, make, expect: str, what: str, reason: str = "") -> Path:
        path = inbox / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        make(path)
        items.append(Item(what, path, expect, reason))
        return path

    for i in range(n_good):
        put(f"{int(labels[i])}/good{i:03d}.png", png_bytes(images[i]), "ok", "a good file")
    good = png_bytes(images[n_good])
    photo = Image.fromarray(np.kron(images[n_good], np.ones((8, 8), np.uint8)), "L")
    jpeg = encode(photo, "JPEG", quality=90)

    # broken images
    put("7/truncated.png", good[:len(good) // 2], "quarantined", "truncated PNG", "readable")
    crc = bytearray(good)
    crc[len(crc) // 2] ^= 0xFF
    put("7/bad-crc.png", bytes(crc), "quarantined", "PNG with a corrupt chunk", "readable")
    put("7/truncated.jpg", jpeg[:len(jpeg) // 2], "quarantined", "truncated JPEG", "readable")
    put("7/garbage.jpg", b"\xff\xd8\xff\xe0" + bytes(rng.getrandbits(8) for _ in range(3000)), "quarantined",
        "JPEG marker then garbage", "readable")
    flipped = bytearray(jpeg)
    for _ in range(20):
        k = rng.randrange(200, len(flipped))
        flipped[k] ^= 1 << rng.randrange(8)
    put("7/bitflips.jpg", bytes(flipped), "any", "JPEG with flipped bits in its entropy data")
    put("7/empty.png", b"", "quarantined", "zero-byte file", "empty")
    put("7/zero-size.png", png_declaring(0, 0), "quarantined", "PNG declaring 0×0 pixels")
    # bombs
    put("7/bomb-header.png", png_declaring(60000, 60000), "quarantined",
        "PNG declaring 60000×60000 pixels, 0.6 kB on disk", "bomb")
    put("7/bomb-1bit.png", encode(Image.new("1", (4000, 4000)), "PNG"), "quarantined",
        "real 4000×4000 1-bit PNG, 2 kB on disk", "pixels")
    put("7/bomb.ppm", b"P5\n100000 100000\n255\n" + b"\0" * 64, "quarantined", "PGM declaring 10^10 pixels")
    put("7/bomb.bmp", b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 50000, 50000,
                                                                                   1, 24, 0, 0, 0, 0, 0, 0),
        "quarantined", "BMP declaring 50000×50000 pixels")
    ztxt = _chunk(b"zTXt", b"k\0\0" + zlib.compress(b"\0" * (64 << 20), 9))
    put("7/ztxt-bomb.png", good[:-12] + ztxt + good[-12:], "any", "PNG with a zTXt chunk inflating to 64 MiB")
    big = Image.linear_gradient("L").resize((1400, 1400)).convert("RGBA")
    put("6/big-but-allowed.png", encode(big, "PNG"), "ok", "1400×1400 RGBA PNG, under max_pixels")
    # content that is not what the name says
    put("7/binary.png", bytes(rng.getrandbits(8) for _ in range(4000)), "quarantined", "random bytes as .png",
        "readable")
    put("7/utf16.png", "I am text, not an image".encode("utf-16"), "quarantined", "UTF-16 text as .png")
    put("7/eps.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", "quarantined",
        "EPS (Pillow would start Ghostscript)", "readable")
    put("7/tiff.png", encode(photo, "TIFF"), "quarantined", "a TIFF named .png", "readable")
    put("6/jpeg-named.png", jpeg, "ok", "a JPEG named .png")
    put("7/notes.txt", bytes(rng.getrandbits(8) for _ in range(2000)), "ignored", "binary text file", "type")
    put("7/noext", good, "ignored", "no suffix", "type")
    # size
    huge = inbox / "7" / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(8 << 30)  # 8 GiB, sparse: nothing may read it
    items.append(Item("8 GiB sparse .png, over max_file_mb", huge, "quarantined", "limit"))
    put("7/just-over.png", good + b"\0" * int(MAX_FILE_MB * (1 << 20)), "quarantined", "1 MiB + a PNG", "limit")
    # not files
    special("3/x.png", lambda p: p.mkdir(), "absent", "a directory named like a file")
    put("4/y.jpg/inner.png", good, "ok", "a good file inside a directory named y.jpg")
    special("3/pipe.png", lambda p: os.mkfifo(p), "ignored", "a FIFO named .png", "regular")
    special("3/pipe.txt", lambda p: os.mkfifo(p), "ignored", "a FIFO named .txt")
    special("3/pipelink.png", lambda p: p.symlink_to("pipe.png"), "ignored", "a symlink to the FIFO", "regular")

    def unix_socket(p: Path) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(p))
        s.close()
    special("3/socket.png", unix_socket, "ignored", "a unix socket named .png", "regular")
    if os.geteuid() == 0:
        special("3/null.png", lambda p: os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 3)), "ignored",
                "a character device (like /dev/null) named .png", "regular")
    # symlinks
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.png").write_bytes(good)
    (outside / "5").mkdir(exist_ok=True)
    (outside / "5" / "secret.png").write_bytes(good)
    special("3/escape.png", lambda p: p.symlink_to(outside / "secret.png"), "ignored", "symlink out of the tree",
            "leads out")
    special("3/zero.png", lambda p: p.symlink_to("/dev/zero"), "ignored", "symlink to /dev/zero", "leads out")
    special("escape-dir", lambda p: p.symlink_to(outside), "ignored", "symlink to a directory outside", "leads out")
    special("3/dangling.png", lambda p: p.symlink_to("nothing-here.png"), "ignored", "dangling symlink", "dangling")
    special("3/loop.png", lambda p: p.symlink_to("loop.png"), "ignored", "symlink to itself")
    special("3/alias.png", lambda p: p.symlink_to(f"../{int(labels[0])}/good000.png"), "ok",
            "symlink to a good file inside the tree")
    # names
    put(b"2/caf\xe9.png", good, "ignored", "latin-1 byte in the name", "UTF-8")
    put(b"2/\xff\xfe\x80.png", good, "ignored", "invalid UTF-8 bytes only", "UTF-8")
    put(b"lab\xe9l/x.png", good, "ignored", "a label folder whose name is not UTF-8", "UTF-8")
    for name in ("日本語.png", "emoji-😀.png", "new\nline.png", "tab\tname.png", "%_like.png", "back\\slash.png",
                 "-dash.png", "caf\u00e9.png", "cafe\u0301.png", "a" * 240 + ".png", " space .png"):
        put(f"2/{name}", good, "ok", f"odd but valid UTF-8 name {name[:20]!r}")
    put("7/" + "b" * 251 + ".png", good[:40], "quarantined", "bad file with a 255-byte name", "readable")
    put("stray.png", good, "ignored", "a file outside any label folder", "label folder")
    put("2/.hidden.png", good, "absent", "a hidden file")
    put("2/copying.png.part", good[:10], "absent", "an unfinished copy (.part)")
    put("2/backup.png~", good, "absent", "an editor backup (~)")
    # a tree deeper than Python's recursion limit: refused at the depth bound, with a reason
    deep = deep_dirs(inbox / "5", 1100)
    put(str((deep / "deep.png").relative_to(inbox)), good, "absent", "a good file 1,100 directories deep")
    bound = inbox / "5" / Path(*["d"] * (MAX_DEPTH - 1))
    items.append(Item(f"the folder {MAX_DEPTH} levels down that holds deeper ones", bound, "ignored", "levels"))
    return items


def deep_dirs(base: Path, depth: int) -> Path:
    """base/d/d/…/d, `depth` levels (os.makedirs and Path.mkdir recurse, and would hit the recursion limit)."""
    base.mkdir(parents=True, exist_ok=True)
    cur = base
    for _ in range(depth):
        cur = cur / "d"
        os.mkdir(cur)
    return cur


def remove_deep(base: Path) -> None:
    """Remove what deep_dirs made, bottom up (shutil.rmtree recurses too; pytest's cleanup would trip on it)."""
    if not base.exists():
        return
    cur = base
    while (cur / "d").is_dir():
        cur = cur / "d"
    while True:
        for p in cur.iterdir():
            if p.is_dir() and not p.is_symlink():
                p.rmdir()
            else:
                p.unlink()
        if cur == base:
            break
        cur = cur.parent


def tree_state(top: Path) -> dict[bytes, tuple]:
    """Everything below `top` (not following links): type, size, and the bytes of small regular files."""
    out = {}
    stack = [os.fsencode(top)]
    while stack:
        d = stack.pop()
        for name in os.listdir(d):
            p = os.path.join(d, name)
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                stack.append(p)
            body = None
            if stat.S_ISREG(st.st_mode) and st.st_size <= 4 << 20:
                with open(p, "rb") as f:
                    body = f.read()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            out[p] = (stat.S_IFMT(st.st_mode), st.st_size if stat.S_ISREG(st.st_mode) else 0, body)
    return out


def mutations(images: np.ndarray, rng: random.Random, n: int) -> list[tuple[str, bytes]]:
    """`n` damaged images of every format ingestion reads: truncated, bit-flipped, spliced, or with random header
    bytes. Each must be learnt (if still decodable) or quarantined — never crash or hang the daemon."""
    formats = [("png", "PNG", {}), ("jpg", "JPEG", {"quality": 85}), ("gif", "GIF", {}), ("bmp", "BMP", {}),
               ("webp", "WEBP", {}), ("ppm", "PPM", {})]
    out = []
    for i in range(n):
        ext, fmt, kw = formats[i % len(formats)]
        img = Image.fromarray(images[rng.randrange(len(images))], "L").resize((rng.randint(8, 64),) * 2)
        data = bytearray(encode(img if fmt != "PPM" else img.convert("RGB"), fmt, **kw))
        how = rng.choice(("truncate", "flip", "header", "splice", "zero"))
        if how == "truncate":
            data = data[:rng.randrange(1, len(data))]
        elif how == "flip":
            for _ in range(rng.randint(1, 16)):
                k = rng.randrange(len(data))
                data[k] ^= 1 << rng.randrange(8)
        elif how == "header":
            for k in rng.sample(range(min(64, len(data))), rng.randint(1, 6)):
                data[k] = rng.getrandbits(8)
        elif how == "splice":
            k = rng.randrange(len(data))
            data = data[:k] + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 512))) + data[k:]
        else:
            k = rng.randrange(len(data))
            data[k:k + rng.randint(1, 256)] = b"\0" * len(data[k:k + rng.randint(1, 256)])
        out.append((f"m{i:05d}-{how}.{ext}", bytes(data)))
    return out


# ---------------------------------------------------------------------------------------------- the scenario

def hostile_files(work: Path, bundle: Path, images: np.ndarray, labels: np.ndarray, seed: int, n_mutations: int = 0,
                  say=print) -> Tally:
    t = Tally("hostile files")
    t0 = time.monotonic()
    rng = random.Random(seed)
    root = work / "hostile"
    stage = work / "stage"
    d = Daemon(root, bundle, training="min_new_samples = 20\nepochs = 20\n", data=HOSTILE_DATA)
    try:
        if not d.came_up():
            t.crashes += 1
            t.problem(f"the daemon did not start: {(root / 'autlearnd.log').read_text()[-2000:]}")
            return t
        wait_until(lambda: call(root, "status")["last_scan"] is not None, 30, "the first scan")
        rss0 = proc_status(d.proc.pid, "VmRSS")
        items = build_corpus(stage, work / "outside", images, labels, rng)
        mutated = mutations(images, rng, n_mutations)
        for name, data in mutated:
            p = stage / "9" / name
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            items.append(Item(f"mutated image {name}", p, "any"))
        for entry in sorted(stage.iterdir()):  # whole folders appear at once, as a finished copy would
            os.rename(entry, d.inbox / entry.name)
        for it in items:
            it.path = d.inbox / it.path.relative_to(stage)
        before = tree_state(d.inbox)
        t.bad_inputs = sum(it.expect != "ok" for it in items)
        t.trials = len(items)
        n_good = sum(it.expect == "ok" for it in items)

        def settled():
            assert d.proc.poll() is None, "the daemon died"
            st = call(root, "status")
            s = st["samples"]
            return st if st["last_scan"] and s["ok"] >= n_good and st["activity"] == "idle" else None
        try:
            st = wait_until(settled, 60 + n_mutations / 20, "the corpus to be scanned")
        except AssertionError as e:
            t.problem(f"the scan did not finish: {e}")
            st = call(root, "status")
        rows = {r[0]: r[1:] for r in query(root / "state" / "autlearn.sqlite",
                                            "SELECT path, status, reason FROM samples")}
        for it in items:
            row = rows.get(db_path(it.path)[0])
            t.detail[f"expected {it.expect}"] += 1
            if it.expect == "absent":
                if row is not None:
                    t.problem(f"{it.what}: recorded as {row}, expected to be left alone")
                continue
            if row is None:
                t.problem(f"{it.what}: not recorded at all")
                continue
            status, reason = row
            t.detail[f"got {status}"] += 1
            if it.expect == "any":
                if status not in ("ok", "quarantined", "ignored"):
                    t.problem(f"{it.what}: status {status}")
            elif status != it.expect:
                t.problem(f"{it.what}: {status} ({reason}), expected {it.expect}")
            elif it.reason and it.reason.lower() not in (reason or "").lower():
                t.problem(f"{it.what}: reason {reason!r} does not mention {it.reason!r}")
            if status in ("quarantined", "ignored") and not reason:
                t.problem(f"{it.what}: {status} without a reason")
        refused = sum(1 for r in rows.values() if r[0] in ("quarantined", "ignored"))
        reasons = list((root / "state" / "quarantine").glob("*.reason.txt"))
        if len(reasons) < refused:
            t.problem(f"{refused} refused entries but only {len(reasons)} reason files")
        for r in reasons:
            lines = r.read_text().splitlines()
            if len(lines) != 3 or not lines[0].startswith("path: ") or "\n" in lines[0] and "\\x0a" not in lines[0]:
                t.problem(f"reason file {r.name} is not three lines (path, reason, copy): {lines[:4]}")
        # the good files are learnt
        before_round = max_round(root)
        call(root, "train")
        r = wait_round_after(root, before_round, 60)
        if r is None:
            t.problem("no round completed after the corpus")
        else:
            n = query(root / "state" / "autlearn.sqlite", "SELECT n_train + n_holdout FROM rounds WHERE id=?",
                      (r[0],))[0][0]
            ok = query(root / "state" / "autlearn.sqlite", "SELECT COUNT(*) FROM samples WHERE status='ok'")[0][0]
            if n != ok:
                t.problem(f"the round learnt from {n} samples, {ok} are usable")
            t.detail["samples learnt"] = n
        # memory stayed bounded, nothing of the user's was touched, the daemon is still up
        hwm = proc_status(d.proc.pid, "VmHWM")
        t.detail["idle RSS (MB)"] = rss0 // 1024
        t.detail["peak RSS (MB)"] = hwm // 1024
        if hwm - rss0 > RSS_BOUND_MB * 1024:
            t.problem(f"peak RSS grew by {(hwm - rss0) // 1024} MB (bound {RSS_BOUND_MB} MB)")
        after = tree_state(d.inbox)
        if after != before:
            changed = [os.fsdecode(k) for k in set(before) ^ set(after)] + \
                      [os.fsdecode(k) for k in before if k in after and before[k] != after[k]]
            t.problem(f"the user's folder changed: {changed[:5]}")
        t0s = time.monotonic()
        code = d.stop()
        t.detail["stop (s)"] = round(time.monotonic() - t0s, 2)
        if code != 0:
            t.crashes += 1
            t.problem(f"the daemon exited with {code}")
    finally:
        t.end(d, t0)
        remove_deep(d.inbox / "5" / "d")
        remove_deep(stage / "5" / "d")
    say(f"hostile files: {t.trials} files, {t.bad_inputs} bad: {dict(t.detail)}")
    return t
