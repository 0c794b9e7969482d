"""``frod-rt train BASE --data FILE.jsonl --out DIR``: fine-tune one FRoD adapter.

Each JSONL line is ``{"prompt": ..., "completion": ...}`` (loss on the completion tokens
only, the tokenizer's EOS appended) or ``{"text": ...}`` (loss on every token). Trains the
method's ``FrodModel`` (base frozen, ``dl`` and ``s`` trainable, AdamW with separate learning
rates) for ``--steps`` steps over shuffled mini-batches and writes the adapter directory
(``frod_adapter.json`` + ``frod_adapter.safetensors``) plus ``training.json`` (settings and
the loss curve)."""
from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

from .common import CLIError, existing_dir, load_hf_model, load_tokenizer, torch_dtype

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"]
# the paper's settings for LLaMA-size causal LMs with targets q,k,v,o,gate,up (DESIGN.md 1.2)
DEFAULT_LR_S, DEFAULT_LR_DL, DEFAULT_SPARSE_RATE = 1e-5, 1e-4, 0.02


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a FRoD adapter on a JSONL file",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE", help="Hugging Face causal LM directory")
    p.add_argument("--data", required=True, metavar="FILE.jsonl",
                   help='examples: {"prompt", "completion"} or {"text"} per line')
    p.add_argument("--out", required=True, metavar="DIR", help="adapter directory to write")
    p.add_argument("--name", default=None, help="adapter name (default: basename of --out)")
    p.add_argument("--targets", nargs="+", default=DEFAULT_TARGETS, metavar="MODULE",
                   help=f"target module suffixes (default: {' '.join(DEFAULT_TARGETS)})")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--batch-size", type=int, default=4, help="examples per step (default 4)")
    p.add_argument("--lr-s", type=float, default=DEFAULT_LR_S,
                   help=f"learning rate of the sparse values s (default {DEFAULT_LR_S:g}, the "
                        "paper's for causal LMs)")
    p.add_argument("--lr-dl", type=float, default=DEFAULT_LR_DL,
                   help=f"learning rate of the scaling deltas dl (default {DEFAULT_LR_DL:g})")
    p.add_argument("--weight-decay", type=float, default=0.0, help="on dl and s (default 0)")
    p.add_argument("--sparse-rate", type=float, default=DEFAULT_SPARSE_RATE,
                   help="fraction of off-diagonal entries of S per layer (default "
                        f"{DEFAULT_SPARSE_RATE:g}, the paper's for causal LMs)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per example at most")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (default 0)")
    p.add_argument("--dtype", default=None, help="training dtype (default: the model's)")
    p.add_argument("--cache-dir", default=None, help="decomposition cache directory")
    p.add_argument("--basis", default="frod_rt", choices=("frod_rt", "peft"),
                   help="frod_rt's float64 basis (default) or PEFT's, so the adapter exports "
                        "to PEFT exactly (frod-rt export)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(run=run)


def read_examples(path: Path) -> list[dict]:
    """Parse and check the JSONL file; CLIError naming the line on a bad example."""
    if not path.is_file():
        raise CLIError(f"--data: file not found: {path}")
    out = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise CLIError(f"{path}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(ex, dict):
                raise CLIError(f"{path}:{i}: expected a JSON object")
            if "text" in ex and isinstance(ex["text"], str) and ex["text"]:
                out.append({"prompt": "", "completion": ex["text"], "all": True})
            elif isinstance(ex.get("prompt"), str) and isinstance(ex.get("completion"), str) \
                    and ex["completion"]:
                out.append({"prompt": ex["prompt"], "completion": ex["completion"], "all": False})
            else:
                raise CLIError(f"{path}:{i}: expected {{\"prompt\": str, \"completion\": "
                               f"non-empty str}} or {{\"text\": non-empty str}}")
    if not out:
        raise CLIError(f"--data: {path} has no examples")
    return out


def encode(tok, ex: dict, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) with labels -100 on the prompt tokens."""
    p_ids = list(tok(ex["prompt"])["input_ids"]) if ex["prompt"] else []
    c_ids = list(tok(ex["completion"], add_special_tokens=not p_ids)["input_ids"])
    if not ex["all"] and tok.eos_token_id is not None:
        c_ids.append(tok.eos_token_id)
    ids = (p_ids + c_ids)[:max_length]
    labels = ([-100] * len(p_ids) + c_ids)[:max_length]
    return ids, labels


def collate(batch, pad_id: int):
    import torch
    n = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    lab = torch.full((len(batch), n), -100, dtype=torch.long)
    att = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (x, y) in enumerate(batch):
        ids[i, :len(x)] = torch.tensor(x)
        lab[i, :len(y)] = torch.tensor(y)
        att[i, :len(x)] = 1
    return ids, att, lab


def check_args(args) -> None:
    for name in ("steps", "batch_size", "max_length"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("lr_s", "lr_dl"):
        v = getattr(args, name)
        if not (v >= 0 and math.isfinite(v)):
            raise CLIError(f"--{name.replace('_', '-')} must be a finite number >= 0, got {v}")
    if not 0 < args.sparse_rate <= 1:
        raise CLIError(f"--sparse-rate must be in (0, 1], got {args.sparse_rate}")
    if args.weight_decay < 0:
        raise CLIError(f"--weight-decay must be >= 0, got {args.weight_decay}")


def run(args) -> int:
    import torch
    from tqdm.auto import tqdm

    from ..method import FrodConfig, get_frod_model
    from ..method.config import check_adapter_name
    check_args(args)
    base = existing_dir(args.base, "base model directory")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise CLIError(f"--out {out} exists and is not empty (use --overwrite)")
    name = check_adapter_name(args.name or out.resolve().name)
    examples = read_examples(Path(args.data))
    tok = load_tokenizer(base)
    model = load_hf_model(base, torch_dtype(args.dtype))
    if not hasattr(model, "generate") or getattr(model.config, "is_encoder_decoder", False):
        raise CLIError(f"{base}: train needs a decoder-only causal LM")
    data = [encode(tok, ex, args.max_length) for ex in examples]
    data = [d for d in data if any(t != -100 for t in d[1][1:])]
    if not data:
        raise CLIError("--data: every example is empty after tokenization / truncation")
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    torch.manual_seed(args.seed)
    cfg = FrodConfig(target_modules=list(args.targets), sparse_rate=args.sparse_rate,
                     cache_dir=args.cache_dir, progress=True,
                     # PEFT's basis is per role; frod_rt's own uses the default category mode
                     category_mode="per_role" if args.basis != "frod_rt" else None)
    dec = None
    if args.basis != "frod_rt":
        from ..method.decompose import decompose
        dec = decompose(model, cfg.target_modules, cfg.alpha, cache_dir=args.cache_dir,
                        basis=args.basis)
    fm = get_frod_model(model, cfg, adapter_name=name, decomposition=dec)
    fm.train()
    opt = torch.optim.AdamW(fm.optimizer_param_groups([name], lr_s=args.lr_s, lr_dl=args.lr_dl,
                                                      weight_decay=args.weight_decay))
    rng = random.Random(args.seed)
    order: list[int] = []
    losses = []
    bar = tqdm(range(args.steps), desc=f"train {name}", unit="step")
    for _ in bar:
        batch = []
        while len(batch) < min(args.batch_size, len(data)):
            if not order:
                order = list(range(len(data)))
                rng.shuffle(order)
            batch.append(data[order.pop()])
        ids, att, lab = collate(batch, pad)
        loss = fm(input_ids=ids, attention_mask=att, labels=lab).loss
        if not torch.isfinite(loss):
            raise CLIError(f"training diverged (loss {loss.item()}); lower --lr-s / --lr-dl")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    bar.close()
    out.mkdir(parents=True, exist_ok=True)
    fm.save_adapter(out, name)
    log = {"name": name, "base": str(base), "data": str(args.data), "examples": len(data),
           "steps": args.steps, "batch_size": args.batch_size, "lr_s": args.lr_s,
           "lr_dl": args.lr_dl, "weight_decay": args.weight_decay,
           "sparse_rate": args.sparse_rate, "targets": list(args.targets),
           "seed": args.seed, "fingerprint": fm.fingerprint, "loss": losses}
    (out / "training.json").write_text(json.dumps(log, indent=1))
    print(f"adapter {name!r} written to {out} (loss {losses[0]:.4f} -> {losses[-1]:.4f})")
    return 0
