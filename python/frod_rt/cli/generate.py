"""``frod-rt generate BASE [--adapter NAME=DIR] PROMPT``: one-off generation.

Loads the base (and the adapter, if given) into an Engine, generates for PROMPT and
prints the text as it is produced (``--no-stream`` prints it at the end). ``--chat`` wraps
PROMPT as one user message (the tokenizer's chat template, else the server's simple
template)."""
from __future__ import annotations

import argparse
import sys

from .common import CLIError, adapter_spec, add_engine_options, load_engine


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text once (base or one adapter)",
                       description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE", help="Hugging Face model directory")
    p.add_argument("prompt", metavar="PROMPT", help="the prompt text")
    p.add_argument("--adapter", default=None, metavar="NAME=DIR",
                   help="adapter to apply (NAME=DIR or DIR)")
    p.add_argument("--max-tokens", type=int, default=64, help="new tokens at most (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
    p.add_argument("--chat", action="store_true", help="treat PROMPT as a user chat message")
    p.add_argument("--no-stream", action="store_true", help="print the text at the end")
    add_engine_options(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from ..engine import SamplingParams
    adapters = dict([adapter_spec(args.adapter)]) if args.adapter else {}
    sp = SamplingParams.build(max_tokens=args.max_tokens, temperature=args.temperature,
                              top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                              stop=args.stop, ignore_eos=args.ignore_eos)
    eng = load_engine(args.base, adapters, args)
    if eng.is_encoder:
        raise CLIError(f"{args.base}: an encoder model cannot generate text")
    prompt = args.prompt
    if args.chat:
        from ..server.chat import chat_prompt
        from ..server.protocol import ChatMessage
        prompt = chat_prompt(eng.tokenizer, [ChatMessage(role="user", content=prompt)])
    name = next(iter(adapters), None)
    try:
        if args.no_stream:
            print(eng.generate(prompt, adapter=name, sampling=sp)[0].text)
        else:
            for out in eng.stream(prompt, adapter=name, sampling=sp):
                sys.stdout.write(out.new_text)
                sys.stdout.flush()
            sys.stdout.write("\n")
    finally:
        eng.close()
    return 0
