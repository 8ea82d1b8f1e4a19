"""When a round starts: the tick that finds one due, the round requested or held while paused, what blocks one.

Threads: `tick`, `request_round`, `pause` and `resume` run on the request thread; `take_round` and
`blocking_reasons` (at a round's checkpoints) also on the worker thread. Fields and their one owner:
`_rounds_queued` (round jobs in the worker's queue) and `_round_requested` (a trigger held until it can be
queued) change only under `_lock`; `_paused_by_user` is written only by the request thread (pause, resume); `gate` (the policy, policy.Gate) and its readings have their own lock; `tick_soon` is an
Event anyone may set (a scan ended, a round was requested) and only `tick` clears.
"""

from __future__ import annotations

import shutil
import threading
import time

from .policy import Gate


class Scheduler:
    def __init__(self, service, worker) -> None:
        self.svc = service
        self.worker = worker
        self._lock = threading.Lock()
        self._rounds_queued = 0
        self._round_requested: str | None = None
        self._paused_by_user = False
        self.tick_soon = threading.Event()  # set when a scan ends: the server loop ticks at once, not in 0.5 s
        self.gate: Gate | None = None  # conditions that forbid training (battery, heat, load, window…); None: none

    # ------------------------------------------------------------------ request thread
    def tick(self) -> None:
        """Start a round when one is due and the board can afford it; hand over a requested one unless paused."""
        self.tick_soon.clear()
        if self.svc.stopping:
            return
        with self._lock:
            requested = None if self._paused_by_user else self._round_requested
            if requested:
                self._round_requested = None
                self._rounds_queued += 1
                self.worker.put("round", requested)
            busy = self._rounds_queued > 0
        if busy or self.svc.activity() != "idle":
            return
        config = self.svc.config
        if not config["training.auto"] or self.blocking_reasons() or time.monotonic() < self.worker.retry_at:
            return
        new, need, unit = self.pending()
        interval = config["training.interval_s"]
        if new >= need:
            trigger = f"{new} new {unit}"
        elif new and interval and time.monotonic() - self.worker.last_round_end >= interval:
            trigger = f"interval of {interval:g}s passed with {new} new {unit}"
        else:
            return
        with self._lock:
            self._rounds_queued += 1
        self.worker.put("round", trigger)

    def request_round(self) -> None:
        """`autlearnctl train`: a round at the next tick (after the rescan the caller queued), held while paused."""
        with self._lock:
            self._round_requested = "requested"
        self.tick_soon.set()

    @property
    def paused_by_user(self) -> bool:
        return self._paused_by_user

    def pause(self) -> None:
        self._paused_by_user = True

    def resume(self) -> None:
        self._paused_by_user = False
        self.tick_soon.set()  # a round requested while paused starts now

    # ------------------------------------------------------------------ worker thread
    def take_round(self, trigger: str) -> bool:
        """A round job leaves the worker's queue. Paused by the user, no round starts: it waits for `resume`."""
        with self._lock:
            self._rounds_queued -= 1
            if self._paused_by_user:
                self._round_requested = self._round_requested or trigger
                return False
        return True

    # ------------------------------------------------------------------ both threads
    def pending(self) -> tuple[int, int, str]:
        """What the next round would learn from that no round has, what triggers one, and its unit: a keyboard
        counts new words of text (a growing notes file is one sample), an image bundle new samples."""
        svc = self.svc
        if svc.bundle.task == "next_word":
            from ..learning.keyboard import pending_words
            return pending_words(svc.store, svc.variant.name), svc.config["training.min_new_words"], "words"
        return svc.store.count_new(), svc.config["training.min_new_samples"], "samples"

    def blocking_reasons(self) -> list[str]:
        reasons = ["paused with 'autlearnctl pause'"] if self._paused_by_user else []
        answerer = self.svc.answerer
        if answerer is not None and answerer.benching.is_set():
            reasons.append("measuring the variants ('autlearnctl bench')")
        return reasons + self._disk_reasons() + (self.gate.reasons() if self.gate is not None else [])

    def readings(self) -> dict:
        """The policy's last readings (power, heat, load, GPU, window) for `status`."""
        return self.gate.readings if self.gate is not None else {}

    def _disk_reasons(self) -> list[str]:
        """Learning writes head versions, rounds and cached features: it waits while space is short."""
        need = self.svc.config["data.min_free_mb"]
        out = []
        for where in {self.svc.paths.state, self.svc.paths.cache}:
            try:
                free = shutil.disk_usage(where).free / (1 << 20)
            except OSError:
                continue
            if free < need:
                out.append(f"only {free:.1f} MB free on {where} (learning needs {need:g} MB): waiting for space")
        return out

    def why_not_training(self, st: dict) -> str:
        """The `status` sentence that says why no round runs now (`st`: the service's state)."""
        if st["activity"] == "training":
            return "training now"
        reasons = self.blocking_reasons()
        if reasons:
            return ("round paused: " if st["activity"] == "paused" else "not training: ") + "; ".join(reasons)
        new, need, unit = self.pending()
        if not self.svc.config["training.auto"]:
            return "automatic rounds are off (training.auto = false); 'autlearnctl train' starts one"
        if new < need and unit == "words":
            return (f"waiting for new text: about {new} of {need} new words needed to start a round "
                    f"(training.min_new_words; counted from what was added to the text files since the last round)")
        if new < need:
            return f"waiting for new samples: {new} of {need} needed to start a round"
        wait = self.worker.retry_at - time.monotonic()
        if wait > 0:
            last = st["last_round"]
            why = (f"was skipped ({last['detail']})" if last and last.get("outcome") == "skipped"
                   else f"failed ({st['last_error']})")
            return (f"the last round {why}; automatic rounds resume in {wait:.0f} s "
                    "('autlearnctl train' starts one now)")
        return "a round is about to start"
