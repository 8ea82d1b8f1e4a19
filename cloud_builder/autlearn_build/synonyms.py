"""The synonym table for text augmentation on the board, from the model's own embeddings.

The synonym table for text augmentation on the board (the paper's synonym replacement), derived from the
pretrained model's own embedding matrices: for every vocabulary word, the other words whose vector has a
cosine similarity ≥ threshold, most similar first (at most `max_per_word`). No word list is downloaded.

Vectors (`source`): `input` = rows of the embedding layer, `output` = columns of the softmax layer (a word's
output embedding: which contexts predict it — words that fit the same contexts, the substitutes an
augmentation wants), `both` (default) = the two concatenated. Each matrix is centred on its mean word vector
first (raw LM embeddings share one dominant direction that makes every cosine large) and scaled to unit
mean row norm before concatenation.

File format (synonyms.json, listed in the manifest's `files`):
  {"format": 1, "source": "embedding cosine similarity (both)", "threshold": 0.75, "max_per_word": 5,
   "words": n, "pairs": m, "synonyms": {"word": [["other", 0.81], ...], ...}}
Only words with at least one synonym appear; special tokens never do.
"""

from __future__ import annotations

import json

import numpy as np

FORMAT = 1


SOURCES = ("input", "output", "both")


def synonym_vectors(embedding: np.ndarray, output_weights: np.ndarray, source: str, first_word: int,
                    n_words: int) -> np.ndarray:
    """Rows 0..n_words-1 (specials included, unused) of the vectors `source` names; see the module doc.
    `embedding` [V, E]; `output_weights` [H, K] (the softmax kernel, slot i = column i)."""
    def centred(m: np.ndarray) -> np.ndarray:
        m = np.asarray(m[:n_words], np.float64)
        m = m - m[first_word:].mean(axis=0)
        scale = np.linalg.norm(m[first_word:], axis=1).mean()
        return m / (scale if scale > 0 else 1.0)

    if source == "input":
        return centred(embedding)
    if source == "output":
        return centred(np.asarray(output_weights).T)
    if source == "both":
        return np.concatenate([centred(embedding), centred(np.asarray(output_weights).T)], axis=1)
    raise ValueError(f"unknown synonym source {source!r} (one of {', '.join(SOURCES)})")


def synonym_table(embedding: np.ndarray, vocabulary: list[str], first_word: int, threshold: float,
                  max_per_word: int = 5, chunk: int = 1024) -> dict[str, list[tuple[str, float]]]:
    """Nearest neighbours by cosine similarity among vocabulary[first_word:] (specials excluded)."""
    words = vocabulary[first_word:]
    vectors = np.asarray(embedding[first_word:len(vocabulary)], np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.maximum(norms, 1e-12)
    table: dict[str, list[tuple[str, float]]] = {}
    k = min(max_per_word, len(words) - 1)
    if k < 1:
        return table
    for start in range(0, len(words), chunk):
        sims = unit[start:start + chunk] @ unit.T
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # a word is not its own synonym
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for r in rows:
            cand = top[r][np.argsort(-sims[r, top[r]], kind="stable")]
            found = [(words[j], round(float(sims[r, j]), 4)) for j in cand if sims[r, j] >= threshold]
            if found:
                table[words[start + r]] = found
    return table


def synonym_file(table: dict[str, list[tuple[str, float]]], threshold: float, max_per_word: int,
                 source: str = "both") -> bytes:
    doc = {
        "format": FORMAT,
        "source": f"embedding cosine similarity ({source})",
        "threshold": threshold,
        "max_per_word": max_per_word,
        "words": len(table),
        "pairs": sum(len(v) for v in table.values()),
        "synonyms": {w: [[o, s] for o, s in v] for w, v in sorted(table.items())},
    }
    return (json.dumps(doc, ensure_ascii=False, indent=None, separators=(",", ":")) + "\n").encode("utf-8")
