"""Continuous batching: which sequences run this step, and how many tokens each feeds.

Every step first gives each running sequence its next chunk (1 token while decoding, the
next prompt chunk while still prefilling), then admits waiting requests while the token
budget, the sequence limit, the KV blocks and the adapter device pool allow. Prefill and
decode rows share one forward pass. A prompt is cut into chunks of ``prefill_chunk`` tokens,
a size fixed by the engine, so how a request is chunked never depends on its batch mates.
When the KV cache runs out of blocks the most recently admitted sequence is preempted
(blocks freed, recomputed later from its tokens).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .block_manager import BlockManager
from .sequence import Sequence, Status


class AdapterUnavailable(Exception):
    """Raised by an adapter pool's ``acquire`` when a request's adapter can never be served."""


@dataclass
class ScheduledBatch:
    """Sequences of one step with the number of tokens each feeds, ordered by adapter slot
    (base-model rows first) so every adapter's rows are contiguous."""
    seqs: list[Sequence]
    num_tokens: list[int]

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    """Admission, chunking and preemption.

    Args:
        block_manager: the KV block pool.
        adapter_pool: object with ``acquire(instance, resume) -> slot | None`` (None = not
            ready yet; raises AdapterUnavailable when it never will be) and ``release(slot)``;
            instance None is the base model (slot -1). A sequence's instance is
            ``seq.adapter_ref``, bound when the request was added; ``resume`` is True for a
            preempted sequence (it already computed with that instance).
        max_num_seqs: running sequences at most.
        max_batch_tokens: tokens fed per step at most.
        prefill_chunk: prompt chunk size (<= max_batch_tokens - max_num_seqs).
        max_skips: steps a waiting request may be skipped for want of an adapter slot before
            admission stops behind it (aging; a request waits at most about ``max_skips``
            steps plus the remaining length of the running requests that pin the slots).
    """

    def __init__(self, block_manager: BlockManager, adapter_pool, max_num_seqs: int,
                 max_batch_tokens: int, prefill_chunk: int, max_skips: int = 16):
        self.bm = block_manager
        self.adapters = adapter_pool
        self.max_num_seqs = max_num_seqs
        self.max_batch_tokens = max_batch_tokens
        self.prefill_chunk = prefill_chunk
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions_total = 0
        self.failed: list[tuple[Sequence, str]] = []   # (seq, reason) to report as aborted
        self.max_skips = max(1, int(max_skips))
        self._skips: dict[str, int] = {}    # request id -> steps skipped for want of a slot

    # ---- queue management ---------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Drop ``seq`` from whichever queue holds it, freeing its blocks and adapter pin."""
        if seq in self.running:
            self.running.remove(seq)
            self._release(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self._skips.pop(seq.request_id, None)

    def _release(self, seq: Sequence) -> None:
        self.bm.free(seq)
        self.adapters.release(seq.slot)
        seq.slot = -1

    def finish(self, seq: Sequence) -> None:
        seq.status = Status.FINISHED
        if seq in self.running:
            self.running.remove(seq)
            self._release(seq)

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._release(seq)
        seq.num_computed = 0
        seq.status = Status.WAITING
        seq.preemptions += 1
        self.preemptions_total += 1
        self.waiting.appendleft(seq)

    # ---- one step -------------------------------------------------------------------------
    def _chunk(self, seq: Sequence) -> int:
        return min(seq.remaining_prefill(), self.prefill_chunk)

    def schedule(self) -> ScheduledBatch:
        budget = self.max_batch_tokens
        chosen: list[tuple[Sequence, int]] = []
        # 1. running sequences, oldest first; preempt the newest when blocks run out
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            n = self._chunk(seq)
            if n > budget:
                i += 1
                continue
            while not self.bm.can_allocate(seq, n):
                victim = self.running[-1]
                self._preempt(victim)
                if victim is seq:
                    break
            if seq.status != Status.RUNNING:
                break                      # seq itself was preempted: it was the newest
            self.bm.allocate(seq, n)
            chosen.append((seq, n))
            budget -= n
            i += 1
        # 2. admit waiting requests (FCFS on resources; ones whose adapter has no slot yet
        #    are skipped this step without blocking the others, until one has been skipped
        #    ``max_skips`` times: then nothing behind it is admitted, so the slots drain and
        #    it gets one -- aging, which bounds how long any adapter can starve)
        for seq in list(self.waiting):
            if len(self.running) >= self.max_num_seqs:
                break
            n = self._chunk(seq)
            if n > budget or not self.bm.can_allocate(seq, n):
                break
            try:
                slot = self.adapters.acquire(seq.adapter_ref, resume=seq.preemptions > 0)
            except AdapterUnavailable as e:
                self.waiting.remove(seq)
                self._skips.pop(seq.request_id, None)
                self.failed.append((seq, str(e)))
                continue
            if slot is None:
                skips = self._skips.get(seq.request_id, 0) + 1
                self._skips[seq.request_id] = skips
                if skips >= self.max_skips:
                    break                  # aged: hold everything behind it
                continue
            self._skips.pop(seq.request_id, None)
            self.waiting.remove(seq)
            seq.slot = slot
            seq.status = Status.RUNNING
            self.running.append(seq)
            self.bm.allocate(seq, n)
            chosen.append((seq, n))
            budget -= n
        chosen.sort(key=lambda c: c[0].slot)       # stable: base rows first, then by slot
        return ScheduledBatch([c[0] for c in chosen], [c[1] for c in chosen])
