"""frod_rt main demo: one base model, several FRoD adapters, one mixed batch.

Builds a small Llama-style model with random weights and a word-level tokenizer trained
offline on a built-in paragraph (so even random weights print readable words), saves them as
a Hugging Face directory, writes six random-valued FRoD adapters with
the method's ``write_adapter``, then serves one batch in which every request uses a different
adapter (or none: the base model) and prints each request's output and the overall
throughput. Runs in well under a minute on 2 CPU cores.

    python examples/demo.py [--device cuda] [--adapters 6] [--max-tokens 24]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from frod_rt import Engine, SamplingParams
from frod_rt.engine.toy import random_adapter, save_toy_model, toy_llama, toy_tokenizer

TARGETS = [
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ["q_proj", "v_proj"],
    ["gate_proj", "up_proj", "down_proj"],
]
PROMPTS = [
    "Once upon a time",
    "The quick brown fox",
    "To be or not to be",
    "It was the best of times",
    "A journey of a thousand miles",
    "All happy families are alike",
    "The engine serves many adapters",
    "FRoD adapts a frozen base model",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--adapters", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="frod_demo_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        tok = toy_tokenizer()
        base_dir = save_toy_model(toy_llama(vocab_size=len(tok), hidden=128, layers=4, heads=4,
                                            kv_heads=2, intermediate=256, std=0.06),
                                  tok, tmp / "toy-llama")
        from transformers import LlamaForCausalLM
        base = LlamaForCausalLM.from_pretrained(base_dir)
        names = [f"task{i}" for i in range(args.adapters)]
        for i, name in enumerate(names):
            random_adapter(base, tmp / "adapters" / name, TARGETS[i % len(TARGETS)],
                           sparse_rate=0.02, scale=0.5, seed=i, cache_dir=tmp / "cache")
        print(f"built base model + tokenizer and {len(names)} adapters in "
              f"{time.perf_counter() - t0:.1f}s")

        eng = Engine.load(base_dir, adapters=[tmp / "adapters" / n for n in names],
                          device=args.device, cache_dir=tmp / "cache")
        print(f"{eng}\nadapters: {', '.join(eng.adapters())}\n")

        # one mixed batch: base-only requests and every adapter, all at once
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(2 * (len(names) + 1))]
        adapters = [None if i % (len(names) + 1) == 0 else names[i % (len(names) + 1) - 1]
                    for i in range(len(prompts))]
        sp = SamplingParams(max_tokens=args.max_tokens, temperature=0.0, ignore_eos=True)
        eng.generate(prompts[:2], adapters=adapters[:2], sampling=sp)   # warm-up
        t = time.perf_counter()
        results = eng.generate(prompts, adapters=adapters, sampling=sp)
        dt = time.perf_counter() - t
        for r in results:
            text = r.text.replace("\n", " ")
            print(f"[{r.adapter or 'base':>6}] {r.prompt!r:36} -> {text!r}")
        n_tok = sum(len(r.token_ids) for r in results)
        same_prompt = {}
        for r in results:
            same_prompt.setdefault(r.prompt, set()).add(tuple(r.token_ids))
        print(f"\n{len(results)} requests, {len(set(adapters))} models (base + adapters) in one "
              f"batch: {n_tok} tokens in {dt:.2f}s = {n_tok / dt:.0f} tokens/s on {args.device}")
        st = eng.stats()
        print(f"stats: steps={st['steps_total']} adapters_on_device={st['adapters_on_device']} "
              f"kv_blocks_used={st['kv_blocks_used']}/{st['kv_blocks_total']}")
        eng.close()


if __name__ == "__main__":
    main()
