"""The Chinese keyboard group of `make eval`: a `--tokenizer cjk` bundle pretrained on Debian's fortunes-zh
`chinese` file (modern Chinese), its users the poets of `tang300` + `song100` (one user per poet), measured
per character as the English groups are per word (tools/eval_text.py)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import numpy as np

import eval_text as et
from autlearn_build import text_data as td

ZH_DIR = Path("/usr/share/games/fortunes")
PUBLIC_FILE = "chinese"
POET_FILES = ("tang300", "song100")
_ANSI = re.compile(td.REMOVE_PATTERN)  # the builder's own: terminal colour codes, control characters
_AUTHOR = re.compile(r"^\s*作者[:：]\s*([^（(\s]+)")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_CLAUSE_END = re.compile(r"[^\u3400-\u4dbf\u4e00-\u9fff]+")
_SPACE = re.compile(r"\s+")
SETTINGS = ("seed", "test_fraction", "augment_copies", "zh_limit", "zh_epochs", "zh_build_args", "zh_min_chars",
            "zh_max_chars", "zh_max_users", "kb_board_epochs", "kb_local_epochs", "kb_local_capacity", "kb_fed_rounds",
            "kb_fed_clients", "kb_fed_local_epochs", "kb_fed_lr")


def _entries(path: Path) -> list[str]:
    """The fortunes of one file (split at '%' lines), terminal colour codes removed."""
    text = _ANSI.sub("", path.read_text(encoding="utf-8", errors="replace"))
    return [u.strip() for u in re.split(r"^%\s*$", text, flags=re.M) if u.strip()]


def n_chars(unit: str) -> int:
    """Size of a unit in Chinese characters (the cjk tokenizer's tokens)."""
    return len(_CJK.findall(unit))


def clauses(text: str) -> set[str]:
    """The clauses of `text` (between punctuation, spaces and line ends ignored) of at least 5 characters."""
    return {c for c in _CLAUSE_END.split(_SPACE.sub("", text)) if n_chars(c) >= 5}


def public_entries(root: Path = ZH_DIR) -> list[str]:
    """The entries of `chinese` that share no clause with the poets' poems (it quotes some Tang poems: those
    entries would put the users' held-out text into pretraining)."""
    poems = set().union(*(clauses(p) for ps in poet_units(root).values() for p in ps))
    return [e for e in _entries(root / PUBLIC_FILE) if not clauses(e) & poems]


def public_folder(dest: Path, root: Path = ZH_DIR, per_file: int = 100) -> Path:
    """The public (pretraining) text as the builder reads it: `public_entries`, `per_file` to a .txt file (so
    that the builder holds out whole files); written once under `dest`."""
    if (dest / "done").exists():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    entries = public_entries(root)
    for i in range(0, len(entries), per_file):
        (dest / f"part{i // per_file:03d}.txt").write_text("\n\n".join(entries[i:i + per_file]) + "\n",
                                                            encoding="utf-8")
    (dest / "done").write_text("")
    return dest


def poet_units(root: Path = ZH_DIR) -> dict[str, list[str]]:
    """{"zh/POET": [poem, …]}: every poem of tang300 and song100 under its author, title and author lines
    removed (the poem's lines are kept; a line end is no sentence end for the cjk tokenizer, its 。 is)."""
    out: dict[str, list[str]] = {}
    for name in POET_FILES:
        for entry in _entries(root / name):
            lines = entry.splitlines()
            author = next((m.group(1) for m in map(_AUTHOR.match, lines) if m), None)
            body = [ln.strip() for ln in lines if ln.strip() and not _AUTHOR.match(ln) and not ln.startswith("《")]
            if author and body:
                out.setdefault(f"zh/{author}", []).append("\n".join(body))
    return out


def make_users(min_chars: int, max_chars: int, test_fraction: float, seed: int, max_users: int | None,
               root: Path = ZH_DIR) -> list[dict]:
    """The poets with at least `min_chars` characters (the largest `max_users`), each capped at `max_chars`."""
    return et.make_users({"zh": poet_units(root)}, min_chars, max_chars, test_fraction, seed, max_users,
                         count=n_chars)


def ensure_bundle(work: Path, args, bin_dir: Path, log) -> Path:
    extra = "".join(c for c in args.zh_build_args if c.isalnum())
    tag = f"zh-l{args.zh_limit}-e{args.zh_epochs}-s{args.seed}" + (f"-{extra}" if extra else "")
    out = work / f"bundle-{tag}"
    if (out / "manifest.json").exists():
        return out
    data = public_folder(work / "zh-public")
    cmd = [str(bin_dir / "autlearn-build"), "text", "--data", str(data), "--tokenizer", "cjk", "--limit",
           str(args.zh_limit), "--epochs", str(args.zh_epochs), "--seed", str(args.seed), "--out", str(out), "--force"]
    cmd += shlex.split(args.zh_build_args)
    log(f"   building: {' '.join(cmd[1:])}")
    with open(work / f"build-{tag}.log", "w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"autlearn-build text (Chinese) failed; see {work / f'build-{tag}.log'}")
    return out


def run(args, work: Path, bin_dir: Path, log, summary_of) -> dict:
    """Pretrained, AutLearn offline / + aug. / online (the board), local only, centralised and FedAvg (as for
    the English users: tools/eval_text.py, the public text the bundle's own), per poet."""
    from autlearn.learning.keyboard import Tokenizer

    t0 = time.monotonic()
    if not (ZH_DIR / PUBLIC_FILE).is_file():
        raise SystemExit(f"{ZH_DIR / PUBLIC_FILE} is missing: apt-get install fortunes-zh (make eval does)")
    log(f"== keyboard (Chinese): bundle (autlearn-build text --tokenizer cjk on fortunes-zh '{PUBLIC_FILE}', "
        f"--limit {args.zh_limit} --epochs {args.zh_epochs})")
    bundle = ensure_bundle(work, args, bin_dir, log)
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    tok = Tokenizer(manifest["tokenizer"])
    users = make_users(args.zh_min_chars, args.zh_max_chars, args.test_fraction, args.seed, args.zh_max_users)
    log(f"   {len(users)} poets of {' + '.join(POET_FILES)} with >= {args.zh_min_chars} characters (capped at "
        f"{args.zh_max_chars}): {', '.join(u['name'] for u in users)}")
    rows = []
    for u in users:
        r = et.board_user(u, bundle, work / "boards-zh", args.kb_board_epochs, args.augment_copies)
        rows.append(r)
        log(f"   {u['name']}: top-1/top-3 pretrained {r['pretrained']['top1']:.3f}/{r['pretrained']['top3']:.3f}  "
            f"+aug {r['autlearn_offline_aug']['top1']:.3f}/{r['autlearn_offline_aug']['top3']:.3f}  online "
            f"{r['autlearn_online']['top1']:.3f}/{r['autlearn_online']['top3']:.3f}")

    def sentences_of(units):
        return [s for u in units for s in tok.sentences(u)]

    log(f"== keyboard (Chinese): local only ({args.kb_local_epochs} epochs from scratch per poet)")
    for i, lm in enumerate(et.local_only(users, manifest, args.seed, args.kb_local_epochs, args.kb_local_capacity,
                                         sentences_of)):
        rows[i]["local_only"] = et.score_words(lm.topk(sentences_of(users[i]["test"])),
                                               et.truth_of(sentences_of(users[i]["test"])))
    from collections import Counter

    vocab = set(manifest["vocabulary"])
    for i, u in enumerate(users):  # the poet's own 3 most frequent characters suggested everywhere
        own = [w for w, _ in sorted(Counter(w for s in sentences_of(u["train"]) for w in s).items(),
                                    key=lambda kv: (-kv[1], kv[0]))[:3]]
        test = sentences_of(u["test"])
        rows[i]["own_frequency"] = et.score_words([own] * sum(len(s) + 1 for s in test), et.truth_of(test))
        chars = [w for s in test for w in s]
        rows[i]["test_outside_vocabulary"] = round(sum(w not in vocab for w in chars) / max(1, len(chars)), 4)
    public = td.load_corpus(str(public_folder(work / "zh-public")), manifest["tokenizer"]["kind"])
    cinfo, finfo, pinfo = et.centralised_and_fedavg(users, rows, manifest, args, sentences_of, log, public,
                                                    "keyboard (Chinese)")
    methods = ["pretrained", "own_frequency", "local_only", "autlearn_offline", "autlearn_offline_aug", "autlearn_online",
               "centralised", "fedavg", "pretrained_keras_float"]
    return {
        "bundle": {"dir": str(bundle), "limit": args.zh_limit, "epochs": args.zh_epochs, "seed": args.seed,
                   "public": f"fortunes-zh {PUBLIC_FILE} ({manifest['build'].get('documents')} files of 100 entries)",
                   "held_out_documents": manifest["metrics"]["held_out_documents"],
                   "manifest_top1_int8": manifest["metrics"]["top1_int8"],
                   "manifest_top3_int8": manifest["metrics"]["top3_int8"],
                   "unk_rate": manifest["metrics"]["unk_rate"], "build_args": args.zh_build_args},
        "users": [{k: v for k, v in r.items() if k not in ("online_prequential", "pretrained_stream")} for r in rows],
        "test_outside_vocabulary": summary_of([r["test_outside_vocabulary"] for r in rows]),
        "methods": {m: {k: summary_of([r[m][k] for r in rows]) for k in ("top1", "top3")} for m in methods},
        "pooled": pooled(rows, methods),
        "online_prequential_top1": summary_of([r["online_prequential"]["accuracy"] for r in rows]),
        "metric": "every character of the poet's held-out poems (the cjk tokenizer's tokens); hit = exact "
                  "character among the top-1 / top-3 suggestions (sentence ends not counted)",
        "own_frequency": "the poet's 3 most frequent training characters suggested at every position",
        "pretrained_keras_float": "the bundle's float model re-created in Keras (FedAvg's start), not the board",
        "centralised": cinfo, "fedavg": finfo, "pretrained_recreated": pinfo,
        "board": {"epochs": args.kb_board_epochs, "augment_copies": args.augment_copies},
        "local_only": {"epochs": args.kb_local_epochs, "capacity": args.kb_local_capacity},
        "settings": {k: getattr(args, k) for k in SETTINGS},
        "seconds": round(time.monotonic() - t0, 1),
    }


def pooled(rows: list[dict], methods: list[str]) -> dict:
    """Per method, hits over every poet's held-out characters together (a poet with 60 test characters moves the
    mean over poets by 1.7 points per hit; this weighs each character once)."""
    out = {}
    for m in methods:
        n = sum(r[m]["words"] for r in rows)
        hits = {k: round(sum(r[m][k] * r[m]["words"] for r in rows if r[m][k] is not None)) for k in ("top1", "top3")}
        out[m] = {"characters": n, "hits_top1": hits["top1"], "hits_top3": hits["top3"],
                  "top1": hits["top1"] / n if n else None, "top3": hits["top3"] / n if n else None}
    return out


def write(res: dict, out: Path) -> None:
    """reports/eval_zh.json and eval_zh.md."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_zh.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    b, c, fa = res["bundle"], res["centralised"], res["fedavg"]
    md = ["# Keyboard accuracy, Chinese (`make eval`, tools/eval_zh.py)", "",
          f"Bundle: `autlearn-build text --tokenizer cjk` on {b['public']}, --limit {b['limit']} --epochs "
          f"{b['epochs']} {b.get('build_args', '')}; its own held-out files: top-1 {b['manifest_top1_int8']:.4f}, "
          f"top-3 {b['manifest_top3_int8']:.4f} (int8), <unk> {b['unk_rate']:.3f}. Users: the poets of tang300 + "
          f"song100 ({len(res['users'])}); of their held-out characters {_f(res['test_outside_vocabulary']['mean'])} "
          f"are outside the bundle's vocabulary. Metric: {res['metric']}. own_frequency: {res['own_frequency']}. "
          f"Board: {res['board']['epochs']} head epochs, {res['board']['augment_copies']} augmented copy. Local only: "
          f"{res['local_only']['epochs']} epochs from scratch, own vocabulary. Centralised (as for the English users, "
          f"tools/eval_text.py): {c['public_tokens']} public + {c['user_tokens']} user tokens, {c['epochs']} epochs "
          f"from scratch, vocabulary {c['vocabulary']}. FedAvg: {fa['rounds']} rounds, {fa['clients_per_round']} of "
          f"{fa['users']} clients per round, {fa['local_epochs']} local epoch(s), {fa['optimizer']}, from the "
          f"re-created pretrained model ({fa['token_gradients']} client token-gradients vs "
          f"{c['token_gradients']} for centralised). pretrained_keras_float: {res['pretrained_keras_float']}.", "",
          "| method | top-1 mean over poets | top-3 mean over poets | users | top-1 pooled (hits) | top-3 pooled (hits) "
          "|", "|---|---|---|---|---|---|"]
    for m, v in res["methods"].items():
        p = res.get("pooled", {}).get(m)
        both = (f" {_f(p['top1'])} ({p['hits_top1']}/{p['characters']}) | {_f(p['top3'])} ({p['hits_top3']}) |" if p
                else " | |")
        md.append(f"| {m} | {_f(v['top1']['mean'])} | {_f(v['top3']['mean'])} | {v['top1']['n_users']} |" + both)
    md += ["", "| poet | train chars | test chars | pretrained top-1/3 | AutLearn + aug. top-1/3 | local only top-1/3 "
           "| centralised top-1/3 | FedAvg top-1/3 | own frequency top-1/3 |", "|---|---|---|---|---|---|---|---|---|"]
    for u in res["users"]:
        md.append(f"| {u['name']} | {u['n_train_words']} | {u['n_test_words']} | {_pair(u['pretrained'])} | "
                  f"{_pair(u['autlearn_offline_aug'])} | {_pair(u['local_only'])} | {_pair(u['centralised'])} | "
                  f"{_pair(u['fedavg'])} | {_pair(u['own_frequency'])} |")
    if res.get("targets"):
        md += ["", "| target | value | reference | met |", "|---|---|---|---|"]
        for t in res["targets"]:
            md.append(f"| {t['target']} | {_f(t.get('value'))} | {_f(t.get('reference'))} | "
                      f"{'yes' if t['met'] else 'NO' if t['met'] is False else 'n/a'} |")
    off = res.get("not_default", {})
    md.append(f"\n{res['seconds']:.0f} s; " + ("at the `make eval` defaults." if not off else "not at the `make eval` "
              "defaults: " + ", ".join(f"--{k.replace('_', '-')} {v!r} (default {d!r})" for k, (v, d) in off.items())
              + "."))
    (out / "eval_zh.md").write_text("\n".join(md) + "\n", encoding="utf-8")


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def _pair(r: dict) -> str:
    return f"{_f(r['top1'])} / {_f(r['top3'])}"
