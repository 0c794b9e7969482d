"""Tiny random-weight transformers models shared by the method tests."""
from __future__ import annotations

import torch


def tiny_bert(seed: int = 0, dtype=torch.float32):
    from transformers import BertConfig, BertModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=61, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=37, max_position_embeddings=32)
    return BertModel(cfg).to(dtype).eval()


def tiny_llama(seed: int = 0, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=67, hidden_size=20, intermediate_size=29, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).to(dtype).eval()


def tiny_gpt2(seed: int = 0, dtype=torch.float32):
    from transformers import GPT2Config, GPT2Model
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=53, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                     bos_token_id=0, eos_token_id=0)
    return GPT2Model(cfg).to(dtype).eval()


BERT_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense",
                "output.dense"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]


def trained_peft(base, targets, rate=0.05, seed=0, lam_noise=0.2, s_scale=0.1):
    """A PEFT FRoD model (``peft.FrodConfig``) on a copy of ``base`` with trained-like values:
    ``lambda_l = l0 * (1 + lam_noise N(0,1))``, ``s ~ s_scale * mean(l0) * N(0,1)``."""
    import copy

    from peft import FrodConfig as PeftFrodConfig
    from peft import get_peft_model
    pm = get_peft_model(copy.deepcopy(base), PeftFrodConfig(target_modules=targets,
                                                            sparse_rate=rate, progressbar=False))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in pm.modules():
            if hasattr(mod, "frod_lambda_l") and "default" in mod.frod_lambda_l:
                lam = mod.frod_lambda_l["default"]
                scale = float(lam.abs().mean())
                lam.mul_(1 + lam_noise * torch.randn(lam.shape, generator=g))
                s = mod.frod_lambda_s_values["default"]
                s.copy_(s_scale * scale * torch.randn(s.shape, generator=g))
    return pm.eval()
