"""Turns a scheduled batch into flat tensors and runs the model forward."""
from __future__ import annotations

import math

import torch

from .block_manager import KVCache
from .models.batch import AdapterBatch, AttnBatch
from .models.bert import BertEncoder
from .models.gpt2 import GPT2Model
from .models.llama import LlamaModel
from .scheduler import ScheduledBatch
from .sequence import Sequence

DECODERS = {a: cls for cls in (LlamaModel, GPT2Model) for a in cls.ARCHS}
ENCODERS = {a: cls for cls in (BertEncoder,) for a in cls.ARCHS}


def wrap_model(hf):
    """Our forward for a loaded HF model; ValueError naming the class if unsupported."""
    name = type(hf).__name__
    if name in DECODERS:
        return DECODERS[name](hf)
    if name in ENCODERS:
        return ENCODERS[name](hf)
    raise ValueError(f"unsupported model class {name}; supported: "
                     f"{', '.join(sorted(DECODERS) + sorted(ENCODERS))}")


class ModelRunner:
    """Runs decoder steps over the paged KV cache.

    ``run(batch)`` feeds each scheduled sequence its chunk (tokens
    ``num_computed .. num_computed+n``), writes their K/V, and returns the float32 logits of
    the sequences whose chunk reached their last token (those that sample this step).
    """

    def __init__(self, model, kv_cache: KVCache, device, auto_merge=None):
        self.model = model
        self.auto_merge = auto_merge          # AutoMerger or None (see auto_merge.py)
        self.kv = kv_cache
        self.block_size = kv_cache.block_size
        self.device = torch.device(device)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[list[Sequence], torch.Tensor]:
        bs = self.block_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        row_slots: list[int] = []
        starts, q_lens, ctx_lens, tables = [], [], [], []
        logit_rows: list[int] = []
        sampling: list[Sequence] = []
        for seq, n in zip(batch.seqs, batch.num_tokens):
            s0 = seq.num_computed
            starts.append(len(ids))
            ids.extend(seq.tokens[s0:s0 + n])
            pos.extend(range(s0, s0 + n))
            bt = seq.block_table
            slots.extend(bt[p // bs] * bs + p % bs for p in range(s0, s0 + n))
            row_slots.extend([seq.slot] * n)
            q_lens.append(n)
            ctx_lens.append(s0 + n)
            tables.append(torch.tensor(bt[:math.ceil((s0 + n) / bs)], dtype=torch.long,
                                       device=self.device))
            if s0 + n == seq.num_tokens:
                logit_rows.append(len(ids) - 1)
                sampling.append(seq)
        dev = self.device
        attn = AttnBatch(starts, q_lens, ctx_lens, causal=True, block_tables=tables,
                         slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
                         kv_cache=self.kv)
        if self.auto_merge is not None:
            self.auto_merge.observe(row_slots)
        ab = AdapterBatch(row_slots, dev)
        logits = self.model.forward(torch.tensor(ids, dtype=torch.long, device=dev),
                                    torch.tensor(pos, dtype=torch.long, device=dev), attn, ab,
                                    torch.tensor(logit_rows, dtype=torch.long, device=dev))
        return sampling, logits


@torch.inference_mode()
def encode(model: BertEncoder, token_lists: list[list[int]], row_slots_per_text: list[int],
           device, token_types: list[list[int]] | None = None) -> tuple[torch.Tensor, list[int]]:
    """Packed encoder forward. Returns hidden states (T, hidden) and each text's start row."""
    ids, pos, tt, row_slots, starts, lens = [], [], [], [], [], []
    for i, toks in enumerate(token_lists):
        starts.append(len(ids))
        lens.append(len(toks))
        ids.extend(toks)
        pos.extend(range(len(toks)))
        tt.extend(token_types[i] if token_types else [0] * len(toks))
        row_slots.extend([row_slots_per_text[i]] * len(toks))
    order = sorted(range(len(token_lists)), key=lambda i: row_slots_per_text[i])
    if order != list(range(len(token_lists))):
        raise ValueError("texts must be grouped by adapter slot (base first)")
    attn = AttnBatch(starts, lens, lens, causal=False)
    ab = AdapterBatch(row_slots, device)
    t = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    h = model.hidden(t(ids), t(pos), attn, ab, t(tt))
    return h, starts
