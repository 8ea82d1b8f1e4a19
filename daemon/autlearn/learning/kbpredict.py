"""Next-word suggestions from a keyboard head version and its context memory.

`predict --text` (KeyboardPredictor.suggest), and the same suggestions at every position of whole sentences and
the online accounting of a head that never learns (what tools/eval_text.py scores).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .head import Head
from .knn import SPECIAL_COUNT, Memory, topk_hits

if TYPE_CHECKING:
    from .keyboard import KeyboardLearner

SCORE_ROWS = 1024  # positions whose probabilities are computed at a time ([1024, capacity])


class KeyboardModel:
    """A head version plus its context memory: what answers `predict --text`."""

    def __init__(self, head: Head, memory: Memory, active: np.ndarray):
        self.head, self.memory, self.active = head, memory, active

    def probs(self, f: np.ndarray) -> np.ndarray:
        p = self.head.predict(f, self.active)
        if self.memory.mix > 0 and len(self.memory.keys):
            p = (1 - self.memory.mix) * p + self.memory.mix * self.memory.probs(f, p.shape[1])
        return p


class KeyboardPredictor:
    """The next words after what was typed, from a head version (loaded once per version)."""

    def __init__(self, learner: KeyboardLearner):
        self.learner = learner
        self._cached: tuple[int, KeyboardModel] | None = None

    def suggest(self, text: str, version: int, top: int = 3) -> dict:
        """`predict --text`: the words read as context and the `top` suggested next words (words only)."""
        kl = self.learner
        if self._cached is None or self._cached[0] != version:
            self._cached = (version, kl.model(version, kl.active()))
        model = self._cached[1]
        words = kl.tok.context(text)
        ids = ([kl.tok.bos] + [kl.base_index.get(w, kl.tok.unk) for w in words])[-kl.t:]
        x = np.full((1, kl.t), kl.tok.pad, np.int32)
        x[0, :len(ids)] = ids
        f = kl.extractor(x).reshape(1, kl.t, -1)[:, len(ids) - 1]
        p = model.probs(f)[0]
        p[:SPECIAL_COUNT] = 0.0  # suggestions are words
        names = self._names()
        order = [int(i) for i in np.argsort(-p) if int(i) in names][:top]
        return {"context": words, "suggestions": [{"word": names[i], "p": round(float(p[i]), 6)} for i in order]}

    def top_words(self, sentences: list[list[str]], version: int, k: int = 3) -> list[list[str | None]]:
        """The `k` best suggestions at every position of `sentences` — after <bos>, after each word (the last
        one predicts the sentence end) — special tokens never suggested; None for a slot that holds no word."""
        kl = self.learner
        model = kl.model(version, kl.active())  # whole texts: the slots in use now, not those of a cached model
        names = self._names()
        f, _, _, _ = kl.positions(sentences, kl.store.classes(kl.bundle_id))
        out: list[list[str | None]] = []
        for i in range(0, len(f), SCORE_ROWS):
            p = model.probs(f[i:i + SCORE_ROWS])
            p[:, :SPECIAL_COUNT] = -1.0
            top = np.argsort(-p, axis=1)[:, :k]
            out.extend([[names.get(int(j)) for j in row] for row in top])
        return out

    def stream_hits(self, version: int) -> list[tuple[int, int]]:
        """The online round's accounting for a head that never learns: the user's training text (held-out
        sentences left out) in arrival order, chunks of train_batch positions, each chunk's (top-1 hits, word
        targets) predicted by head `version` — the hits counted as the round counts them (knn.topk_hits)."""
        kl = self.learner
        train = [w for w, held_out, _ in kl.user_sentences() if not held_out]
        f, y, _, _ = kl.positions(train, kl.store.classes(kl.bundle_id))
        model, b = kl.model(version, kl.active()), kl.bundle.train_batch
        chunks = []
        for i in range(0, len(y), b):
            w = y[i:i + b] >= SPECIAL_COUNT
            h1, _ = topk_hits(model.probs(f[i:i + b][w]), y[i:i + b][w])
            chunks.append((h1, int(w.sum())))
        return chunks

    def _names(self) -> dict[int, str]:
        kl = self.learner
        return {slot: name for name, slot in kl.store.classes(kl.bundle_id).items()}
