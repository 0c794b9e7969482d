"""Forward of BERT-family encoders (BertModel, BertForSequenceClassification) over packed
texts (no padding: each text attends to its own tokens); linear layers routed through FRoD."""
from __future__ import annotations

import torch

from .batch import AdapterBatch, AttnBatch
from .fused import fuse_linears
from .grouped import LinearGroup
from .layers import AdaptedLinear, AdapterHead, attention, row_slots_of


class BertEncoder:
    """Wraps a loaded HF BertModel / BertForSequenceClassification (weights used in place)."""

    ARCHS = ("BertModel", "BertForSequenceClassification")

    def __init__(self, hf):
        from transformers.activations import ACT2FN
        self.hf = hf
        cfg = hf.config
        self.config = cfg
        bert = hf.bert if hasattr(hf, "bert") else hf
        names = {id(m): n for n, m in hf.named_modules()}
        lin = lambda m: AdaptedLinear(names[id(m)], m)  # noqa: E731
        emb = bert.embeddings
        self.word, self.pos, self.tok_type, self.emb_ln = (
            emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings, emb.LayerNorm)
        self.num_heads = cfg.num_attention_heads
        self.head_dim = cfg.hidden_size // self.num_heads
        self.scale = self.head_dim ** -0.5
        self.act = ACT2FN[cfg.hidden_act]
        self.layers = []
        for layer in bert.encoder.layer:
            at = layer.attention
            qkv = fuse_linears([at.self.query, at.self.key, at.self.value])   # views of one weight
            L = {"q": lin(at.self.query), "k": lin(at.self.key), "v": lin(at.self.value),
                 "ao": lin(at.output.dense), "ln1": at.output.LayerNorm,
                 "inter": lin(layer.intermediate.dense), "out": lin(layer.output.dense),
                 "ln2": layer.output.LayerNorm}
            L["qkv"] = LinearGroup([L["q"], L["k"], L["v"]], qkv)
            self.layers.append(L)
        pooler = getattr(bert, "pooler", None)
        self.pooler = lin(pooler.dense) if pooler is not None else None
        cls = getattr(hf, "classifier", None)
        self.classifier = lin(cls) if isinstance(cls, torch.nn.Linear) else None
        # modules_to_save heads an adapter may carry (its own copy replaces the base's)
        self.heads = {"classifier": AdapterHead("classifier", cls)} \
            if self.classifier is not None else {}

    @property
    def dtype(self) -> torch.dtype:
        return self.word.weight.dtype

    def hidden(self, input_ids: torch.Tensor, positions: torch.Tensor, attn: AttnBatch,
               ab: AdapterBatch | None, token_type_ids: torch.Tensor | None = None
               ) -> torch.Tensor:
        """Last hidden states (T, hidden) of the packed texts."""
        T = input_ids.shape[0]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.emb_ln(self.word(input_ids) + self.pos(positions) + self.tok_type(token_type_ids))
        H, D = self.num_heads, self.head_dim
        for i, L in enumerate(self.layers):
            q, k, v = L["qkv"](x, ab)          # LinearGroup: one fused GEMM for base rows
            q, k, v = q.view(T, H, D), k.view(T, H, D), v.view(T, H, D)
            o = attention(q, k, v, i, attn, self.scale)
            x = L["ln1"](L["ao"](o, ab) + x)
            x = L["ln2"](L["out"](self.act(L["inter"](x, ab)), ab) + x)
        return x

    def classify(self, hidden: torch.Tensor, cls_rows: torch.Tensor, ab_cls: AdapterBatch | None
                 ) -> torch.Tensor:
        """Logits from the [CLS] rows: pooler (dense + tanh) then classifier."""
        if self.classifier is None or self.pooler is None:
            raise ValueError("classify needs a model with a sequence-classification head "
                             "(e.g. BertForSequenceClassification); this one has none")
        pooled = torch.tanh(self.pooler(hidden[cls_rows], ab_cls))
        logits = self.classifier(pooled, ab_cls)
        logits = self.heads["classifier"].apply(logits, pooled, row_slots_of(ab_cls))
        return logits.float()
