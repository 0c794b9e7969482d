"""Forward of GPT-2 (GPT2LMHeadModel) over a flat token batch with the paged KV cache;
linear layers (Conv1D c_attn/c_proj/c_fc) routed through FRoD."""
from __future__ import annotations

import torch

from .batch import AdapterBatch, AttnBatch
from .layers import AdaptedLinear, AdapterHead, attention, only_logit_rows, row_slots_of


class GPT2Model:
    """Wraps a loaded HF GPT2LMHeadModel (weights used in place)."""

    ARCHS = ("GPT2LMHeadModel",)

    def __init__(self, hf):
        from transformers.activations import ACT2FN
        self.hf = hf
        cfg = hf.config
        self.config = cfg
        tr = hf.transformer
        self.wte, self.wpe, self.ln_f = tr.wte, tr.wpe, tr.ln_f
        self.lm_head = hf.lm_head
        # modules_to_save heads an adapter may carry (its own copy replaces the base's)
        self.heads = {"lm_head": AdapterHead("lm_head", hf.lm_head)}
        self.num_layers = cfg.n_layer
        self.num_heads = self.num_kv_heads = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.act = ACT2FN[cfg.activation_function]
        if getattr(cfg, "reorder_and_upcast_attn", False):
            raise ValueError("GPT-2 configs with reorder_and_upcast_attn are not supported")
        names = {id(m): n for n, m in hf.named_modules()}
        self.layers, self.scales = [], []
        for idx, blk in enumerate(tr.h):
            lin = lambda m: AdaptedLinear(names[id(m)], m)  # noqa: E731
            self.layers.append({
                "ln1": blk.ln_1, "ln2": blk.ln_2,
                "c_attn": lin(blk.attn.c_attn), "attn_proj": lin(blk.attn.c_proj),
                "c_fc": lin(blk.mlp.c_fc), "mlp_proj": lin(blk.mlp.c_proj)})
            scale = self.head_dim ** -0.5 if cfg.scale_attn_weights else 1.0
            if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
                scale /= float(idx + 1)
            self.scales.append(scale)

    @property
    def dtype(self) -> torch.dtype:
        return self.wte.weight.dtype

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttnBatch,
                ab: AdapterBatch | None, logit_rows: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[0]
        H, D = self.num_heads, self.head_dim
        x = self.wte(input_ids) + self.wpe(positions)
        for i, L in enumerate(self.layers):
            h = L["ln1"](x)
            qkv = L["c_attn"](h, ab)
            q, k, v = qkv.split(H * D, dim=-1)
            o = attention(q.reshape(T, H, D), k.reshape(T, H, D), v.reshape(T, H, D), i, attn,
                          self.scales[i])
            if i == len(self.layers) - 1:        # see LlamaModel.forward
                x, o, ab, logit_rows = only_logit_rows(x, o, ab, logit_rows)
            x = x + L["attn_proj"](o, ab)
            h = L["ln2"](x)
            x = x + L["mlp_proj"](self.act(L["c_fc"](h, ab)), ab)
        x = self.ln_f(x if logit_rows is None else x[logit_rows])
        logits = self.lm_head(x)
        logits = self.heads["lm_head"].apply(logits, x, row_slots_of(ab, logit_rows))
        return logits.float()
