"""The small Llama-style base model shared by every engine/train contender (random weights)."""
from __future__ import annotations

import copy

import torch

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# the medium model adapts what issue 13 measured (LLaMA-size practice: down_proj left out)
MEDIUM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]

SIZES = {
    # ~50M parameters: large enough that the GEMMs, not Python, set the engine's speed on CPU
    "medium": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=6,
                   num_attention_heads=12, num_key_value_heads=4, vocab_size=4096),
    "full": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=4, vocab_size=2048),
    "quick": dict(hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=1024),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=2, num_key_value_heads=1, vocab_size=128),
}


def make_base(mode: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A seeded random ``LlamaForCausalLM`` of the given size (eval mode, no EOS token so
    every contender generates exactly the requested number of tokens)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**SIZES[mode], max_position_embeddings=512, bos_token_id=None,
                      eos_token_id=None, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).to(dtype).eval()
    model.requires_grad_(False)
    gc = model.generation_config
    gc.eos_token_id, gc.bos_token_id, gc.pad_token_id = None, None, 0
    return model


def clone(model):
    """An independent copy (PEFT wraps modules in place)."""
    return copy.deepcopy(model)


def describe(model, targets=TARGETS) -> dict:
    c = model.config
    return {"arch": "LlamaForCausalLM (random weights)", "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size, "layers": c.num_hidden_layers,
            "heads": c.num_attention_heads, "kv_heads": c.num_key_value_heads,
            "vocab_size": c.vocab_size, "params": sum(p.numel() for p in model.parameters()),
            "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
            "target_modules": list(targets)}
