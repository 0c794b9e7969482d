"""Forward of Llama-family decoders (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM)
over a flat token batch with the paged KV cache; linear layers routed through FRoD."""
from __future__ import annotations

import torch

from .batch import AdapterBatch, AttnBatch
from .fused import fuse_linears
from .grouped import LinearGroup
from .layers import AdaptedLinear, AdapterHead, attention, only_logit_rows, row_slots_of

_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


class LlamaModel:
    """Wraps a loaded HF Llama-family model (its weights are used in place, not copied)."""

    ARCHS = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")

    def __init__(self, hf):
        from transformers.activations import ACT2FN
        self.hf = hf
        cfg = hf.config
        self.config = cfg
        core = hf.model
        self.embed = core.embed_tokens
        self.norm = core.norm
        self.rotary = core.rotary_emb
        self.lm_head = hf.lm_head
        # modules_to_save heads an adapter may carry (its own copy replaces the base's)
        self.heads = {"lm_head": AdapterHead("lm_head", hf.lm_head)}
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.act = ACT2FN[cfg.hidden_act]
        names = {id(m): n for n, m in hf.named_modules()}
        self.layers = []
        for layer in core.layers:
            at, mlp = layer.self_attn, layer.mlp
            # one weight tensor each for q,k,v and gate,up; the HF modules get views of it
            qkv = fuse_linears([at.q_proj, at.k_proj, at.v_proj])
            gate_up = fuse_linears([mlp.gate_proj, mlp.up_proj])
            d = {p: AdaptedLinear(names[id(getattr(at, p))], getattr(at, p)) for p in _PROJ}
            d.update({p: AdaptedLinear(names[id(getattr(mlp, p))], getattr(mlp, p)) for p in _MLP})
            d["ln1"], d["ln2"] = layer.input_layernorm, layer.post_attention_layernorm
            d["qkv"] = LinearGroup([d["q_proj"], d["k_proj"], d["v_proj"]], qkv)
            d["gate_up"] = LinearGroup([d["gate_proj"], d["up_proj"]], gate_up)
            self.layers.append(d)

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttnBatch,
                ab: AdapterBatch | None, logit_rows: torch.Tensor) -> torch.Tensor:
        """input_ids, positions: (T,) int64. Returns float32 logits (len(logit_rows), vocab).

        q,k,v and gate,up run as groups (:class:`LinearGroup`): one fused GEMM for base rows,
        one ``X V`` per distinct basis for adapted rows. After the last layer's attention
        (which still writes every row's K/V to the cache) only the logit rows go on: its
        o_proj and MLP run over one row per sequence instead of every prompt token.
        """
        T = input_ids.shape[0]
        x = self.embed(input_ids)
        cos, sin = self.rotary(x[None], positions[None])
        cos, sin = cos[0][:, None, :], sin[0][:, None, :]              # (T, 1, D)
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        for i, L in enumerate(self.layers):
            h = L["ln1"](x)
            q, k, v = L["qkv"](h, ab)
            q, k, v = q.view(T, H, D), k.view(T, Hkv, D), v.view(T, Hkv, D)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            o = attention(q, k, v, i, attn, self.scale)
            if i == self.num_layers - 1:
                x, o, ab, logit_rows = only_logit_rows(x, o, ab, logit_rows)
            x = x + L["o_proj"](o, ab)
            h = L["ln2"](x)
            g, u = L["gate_up"](h, ab)
            g = self.act(g) * u
            x = x + L["down_proj"](g, ab)
        x = self.norm(x if logit_rows is None else x[logit_rows])
        logits = self.lm_head(x)
        logits = self.heads["lm_head"].apply(logits, x, row_slots_of(ab, logit_rows))
        return logits.float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
