"""Per-step inputs of a forward pass, passed explicitly (no global context object)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AttnBatch:
    """Where each sequence's rows are in the flat token batch and where its K/V live.

    Sequence i owns rows ``starts[i]:starts[i]+q_lens[i]`` of the batch; its queries sit at
    positions ``ctx_lens[i]-q_lens[i] .. ctx_lens[i]-1`` and attend to the first
    ``ctx_lens[i]`` cached positions (causally when ``causal``). ``block_tables[i]`` is an
    int64 tensor of its KV blocks; ``slot_mapping`` (T,) gives the flat cache slot
    (block * block_size + offset) each new token's K/V is written to. Encoders set
    ``kv_cache=None`` and attend within the batch rows only.
    """
    starts: list[int]
    q_lens: list[int]
    ctx_lens: list[int]
    causal: bool = True
    block_tables: list[torch.Tensor] | None = None
    slot_mapping: torch.Tensor | None = None
    kv_cache: object | None = None      # block_manager.KVCache
    _masks: dict = field(default_factory=dict)

    _decode: tuple | None = None
    _decode_mask: torch.Tensor | None = None
    _prompts: list | None = None

    def prompt_groups(self, device) -> list:
        """Sequences whose rows are their whole context (fresh prompts, or every sequence of
        an encoder batch), grouped by length so each group is one batched attention call:
        a list of (indices into the sequence lists, their rows (B * L,) int64, L), groups of
        at least two sequences only."""
        if self._prompts is None:
            by_len: dict[int, list[int]] = {}
            for i, (q, c) in enumerate(zip(self.q_lens, self.ctx_lens)):
                if q > 1 and (self.kv_cache is None or q == c):
                    by_len.setdefault(q, []).append(i)
            self._prompts = []
            for L, idx in by_len.items():
                if len(idx) < 2:
                    continue
                starts = torch.tensor([self.starts[i] for i in idx], dtype=torch.long, device=device)
                rows = (starts[:, None] + torch.arange(L, device=device)[None, :]).reshape(-1)
                self._prompts.append((idx, rows, L))
        return self._prompts

    def decode_group(self, device, min_size: int = 2):
        """Sequences feeding one token with earlier context in the cache, attended together:
        (indices into the sequence lists, their rows (B,), padded block tables (B, nb) int64,
        context lengths (B,) int64) or None when there are fewer than ``min_size``."""
        if self._decode is None:
            idx = [i for i, (q, c) in enumerate(zip(self.q_lens, self.ctx_lens)) if q == 1 and c > 1]
            if not idx or self.kv_cache is None:
                self._decode = ()
            else:
                nb = max(self.block_tables[i].shape[0] for i in idx)
                bt = torch.zeros(len(idx), nb, dtype=torch.long, device=device)
                for j, i in enumerate(idx):
                    bt[j, : self.block_tables[i].shape[0]] = self.block_tables[i]
                ctx = torch.tensor([self.ctx_lens[i] for i in idx], dtype=torch.long, device=device)
                rows = torch.tensor([self.starts[i] for i in idx], dtype=torch.long, device=device)
                self._decode = (idx, rows, bt, ctx)
        return self._decode if len(self._decode) and len(self._decode[0]) >= min_size else None

    def decode_mask(self, device) -> torch.Tensor:
        """Key mask (B, 1, 1, nb * block_size) of the decode group's padded context."""
        if self._decode_mask is None:
            _, _, bt, ctx = self._decode
            L = bt.shape[1] * self.kv_cache.block_size
            self._decode_mask = (torch.arange(L, device=device)[None, :] < ctx[:, None])[:, None, None, :]
        return self._decode_mask

    def causal_mask(self, q_len: int, ctx_len: int, device) -> torch.Tensor | None:
        """Bool mask (q_len, ctx_len), True = may attend; None when no masking is needed."""
        if not self.causal or q_len == 1:
            return None
        key = (q_len, ctx_len)
        m = self._masks.get(key)
        if m is None:
            qpos = torch.arange(ctx_len - q_len, ctx_len, device=device)[:, None]
            kpos = torch.arange(ctx_len, device=device)[None, :]
            m = kpos <= qpos
            self._masks[key] = m
        return m


class AdapterBatch:
    """Which adapter slot each row of the flat batch uses (-1 = base model).

    Rows arrive grouped by slot (base rows first). For each adapted layer the plan splits
    rows into those computed with the base weight ``W`` (base rows and rows whose adapter does
    not target the layer) and those computed in the 'replace' form
    ``Y = (Z*(l+dl) + S Z) U^T + b`` with ``Z = X V``; plans are cached per distinct set of
    targeting slots, so layers of the same role share one.
    """

    def __init__(self, row_slots: list[int], device):
        self.device = device
        self.num_rows = len(row_slots)
        # run-length encode the row slots
        self.runs: list[tuple[int, int, int]] = []      # (start, end, slot)
        for t, a in enumerate(row_slots):
            if self.runs and self.runs[-1][2] == a and self.runs[-1][1] == t:
                s0, _, _ = self.runs[-1]
                self.runs[-1] = (s0, t + 1, a)
            else:
                self.runs.append((t, t + 1, a))
        self.slots_present = sorted({a for a in row_slots if a >= 0})
        self._plans: dict = {}

    @property
    def any_adapted(self) -> bool:
        return bool(self.slots_present)

    def subset(self, rows: torch.Tensor) -> "AdapterBatch":
        """The adapter batch of ``rows`` (int64 indices into this batch, in the order given):
        what the layers after the last attention see once only the logit rows go on."""
        slots = [a for s, e, a in self.runs for _ in range(e - s)]
        return AdapterBatch([slots[r] for r in rows.tolist()], self.device)

    def plan(self, targets, hot=()) -> "RowPlan":
        """Row split for a layer targeted by the adapters in slots ``targets``, of which those
        in ``hot`` have a merged weight."""
        key = (frozenset(a for a in self.slots_present if a in targets),
               frozenset(a for a in self.slots_present if a in hot))
        p = self._plans.get(key)
        if p is None:
            p = RowPlan(self.runs, key[0] - key[1], self.device, key[1])
            self._plans[key] = p
        return p


class RowPlan:
    """W rows vs replace rows vs merged (hot) rows of one layer. ``w_rows``/``r_rows`` are
    slices when W rows come first and the replace rows after them, else int64 index tensors;
    ``seg_indptr``/``seg_slot`` (int32) index the replace rows after gathering; ``hot_runs``
    lists (start, end, slot) of rows using a merged weight."""

    def __init__(self, runs, adapted: frozenset[int], device, hot: frozenset[int] = frozenset()):
        self.hot_runs = [(s, e, a) for s, e, a in runs if a in hot]
        w_runs = [(s, e) for s, e, a in runs if a not in adapted and a not in hot]
        r_runs = [(s, e, a) for s, e, a in runs if a in adapted]
        self.num_r = sum(e - s for s, e, _ in r_runs)
        self.num_w = sum(e - s for s, e in w_runs)
        self.contiguous = not self.hot_runs and (
            all(r_runs[0][0] >= e for s, e in w_runs) if r_runs else True)
        if self.contiguous:
            split = r_runs[0][0] if r_runs else sum(e - s for s, e, _ in runs)
            self.w_rows = slice(0, split)
            self.r_rows = slice(split, split + self.num_r)
        else:
            self.w_rows = torch.cat([torch.arange(s, e) for s, e in w_runs]).to(device) \
                if w_runs else None
            self.r_rows = torch.cat([torch.arange(s, e) for s, e, _ in r_runs]).to(device) \
                if r_runs else None
        indptr, slots, t = [0], [], 0
        for s, e, a in r_runs:
            t += e - s
            indptr.append(t)
            slots.append(a)
        self.seg_indptr = torch.tensor(indptr, dtype=torch.int32, device=device)
        self.seg_slot = torch.tensor(slots, dtype=torch.int32, device=device)
        self.slots = sorted(adapted)
