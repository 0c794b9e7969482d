"""Training quality of shared-input vs per-role FRoD categories on the real MiniLM (DESIGN.md 2.1).

Two tasks, several seeds, same data/steps/LRs for both category modes; only the basis grouping
differs (``FrodConfig(category_mode=...)``), so the trainable parameters are identical:

* ``docstring6``: the task of ``examples/finetune_minilm.py`` (docstring -> one of 6 packages);
* ``kind2``: is a docstring a class's or a function's? (first paragraphs from scikit-learn,
  networkx and sympy, balanced, held-out split by source file as in finetune_minilm).

    python examples/category_modes.py --seeds 0,1,2 --steps 60     # writes bench/results/category_modes.json

Reports the held-out accuracy and loss after training, per run and as mean +- std per mode.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import finetune_minilm as fm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KIND_DATA = ROOT / "examples/data/docstring_kind.json"
KIND_PACKAGES = ("sklearn", "networkx", "sympy")


def _kind_items(mod: str):
    spec = importlib.util.find_spec(mod)
    for rel, text, is_class in fm.doc_items(Path(list(spec.submodule_search_locations)[0])):
        yield rel, text, int(is_class)


def load_kind(per_class_train: int, per_class_test: int, seed: int):
    """(train, test, labels) of the class-vs-function task (cached in examples/data)."""
    if not KIND_DATA.is_file():
        rng = random.Random(0)
        seen, tr, te = set(), [[], []], [[], []]
        for mod in KIND_PACKAGES:
            for rel, text, y in _kind_items(mod):
                if text in seen:
                    continue
                seen.add(text)
                held = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 5 == 0
                (te if held else tr)[y].append((text, y))
        for lst in tr + te:
            rng.shuffle(lst)
        KIND_DATA.write_text(json.dumps({"labels": ["function", "class"], "packages":
                                         list(KIND_PACKAGES),
                                         "train": tr[0][:600] + tr[1][:600],
                                         "test": te[0][:200] + te[1][:200]}, indent=0))
    raw = json.loads(KIND_DATA.read_text())
    out = []
    for split, per in (("train", per_class_train), ("test", per_class_test)):
        got, count = [], [0, 0]
        for t, y in raw[split]:
            if count[y] < per:
                got.append((t, y))
                count[y] += 1
        out.append(got)
    random.Random(seed).shuffle(out[0])
    random.Random(seed + 1).shuffle(out[1])
    return out[0], out[1], raw["labels"]


def train_once(task, mode, seed, args, tok):
    if task == "docstring6":
        train, test, labels, _ = fm.load_dataset(args.per_class_train, args.per_class_test, seed)
    else:
        train, test, labels = load_kind(args.per_class_train, args.per_class_test, seed)
    torch.manual_seed(seed)
    from frod_rt import FrodConfig, get_frod_model
    encoder, _ = fm.load_minilm()
    model_f = get_frod_model(encoder, FrodConfig(target_modules=args.targets.split(","),
                                                 sparse_rate=args.rate, progress=False,
                                                 category_mode=mode))
    groups = model_f.optimizer_param_groups(lr_s=args.lr_s, lr_dl=args.lr_dl)
    n_adapter = sum(p.numel() for g in groups for p in g["params"])
    model = fm.Classifier(model_f, len(labels), seed)
    opt = torch.optim.AdamW(groups + [{"params": list(model.head.parameters()),
                                       "lr": args.head_lr}], weight_decay=0.0)
    data = fm.batches(train, tok, args.batch, args.max_len, seed)
    model.train()
    t0 = time.perf_counter()
    losses = []
    for _ in range(args.steps):
        ids, mask, y = next(data)
        loss = nn.functional.cross_entropy(model(ids, mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    secs = time.perf_counter() - t0
    acc, tl = fm.evaluate(model, test, tok, args.max_len)
    return {"task": task, "category_mode": mode, "seed": seed, "adapter_params": n_adapter,
            "final_test_acc": acc, "final_test_loss": tl, "train_loss_last10":
            sum(losses[-10:]) / len(losses[-10:]), "train_seconds": secs,
            "n_train": len(train), "n_test": len(test)}


def summary(runs):
    out = {}
    for r in runs:
        out.setdefault(r["task"], {}).setdefault(r["category_mode"], []).append(r)
    table = {}
    for task, modes in out.items():
        for mode, rs in modes.items():
            accs = [r["final_test_acc"] for r in rs]
            losses = [r["final_test_loss"] for r in rs]
            table[f"{task}/{mode}"] = {
                "seeds": [r["seed"] for r in rs], "acc_mean": statistics.mean(accs),
                "acc_std": statistics.pstdev(accs), "loss_mean": statistics.mean(losses),
                "loss_std": statistics.pstdev(losses)}
    return table


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", default="docstring6,kind2")
    ap.add_argument("--modes", default="per_role,shared_input")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--per-class-train", type=int, default=150)
    ap.add_argument("--per-class-test", type=int, default=40)
    ap.add_argument("--targets", default="query,key,value")
    ap.add_argument("--rate", type=float, default=0.01)
    ap.add_argument("--lr-dl", type=float, default=1e-3)
    ap.add_argument("--lr-s", type=float, default=1e-4)
    ap.add_argument("--head-lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(ROOT / "bench/results/category_modes.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, tok = fm.load_minilm()
    runs = []
    path = Path(args.json)
    for task in args.tasks.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            for mode in args.modes.split(","):
                r = train_once(task, mode, seed, args, tok)
                r["load_avg"] = os.getloadavg()
                runs.append(r)
                print(json.dumps(r), flush=True)
                doc = {"what": "held-out accuracy/loss of FRoD on MiniLM, per-role vs shared-input "
                               "categories (same data, steps, LRs, trainable parameter count)",
                       "command": "python examples/category_modes.py " + " ".join(
                           argv if argv is not None else sys.argv[1:]),
                       "settings": vars(args), "machine": {
                           "python": platform.python_version(), "torch": torch.__version__,
                           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
                       "runs": runs, "summary": summary(runs)}
                path.write_text(json.dumps(doc, indent=1))
    for k, v in summary(runs).items():
        print(f"{k:28s} acc {v['acc_mean']:.3f} +- {v['acc_std']:.3f}  "
              f"loss {v['loss_mean']:.3f} +- {v['loss_std']:.3f}  seeds {v['seeds']}")


if __name__ == "__main__":
    main()
