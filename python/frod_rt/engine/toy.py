"""Small offline models for demos, tests and benchmarks (no Hugging Face hub needed).

``toy_tokenizer()`` trains a word-level (or byte-level BPE) tokenizer on a built-in paragraph
(deterministic, well under a second); ``toy_llama()`` / ``toy_gpt2()`` build random-weight models whose vocab
matches it, and ``save_toy_model()`` writes model + tokenizer as a Hugging Face directory.
"""
from __future__ import annotations

from pathlib import Path

import torch

CORPUS = """\
FRoD adapts a frozen base model with a full-rank update that costs about as few trainable
parameters as LoRA. The engine serves many adapters on one shared base model: every batch
mixes requests of different tasks, and each linear layer runs the shared dense products once
while a small per-adapter rotation changes the scaling factors and a sparse set of rotations.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a
single step. To be or not to be, that is the question. All happy families are alike; each
unhappy family is unhappy in its own way. It was the best of times, it was the worst of
times. Once upon a time there was a small model that wanted to speak many languages, so it
learned one adapter per task: translation, summaries, poems, code, questions and answers.
"""


def toy_tokenizer(kind: str = "word", vocab_size: int = 384):
    """A ``PreTrainedTokenizerFast`` trained on ``CORPUS`` (deterministic, well under a second)
    with special tokens <pad>=0, <s>=1, </s>=2 (bos/eos) and <unk>=3.

    kind "word": word-level (lower-cased words and punctuation of the corpus, so a random model
    still prints readable words); kind "bpe": byte-level BPE of ``vocab_size`` (any text)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    if kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        trainer = trainers.WordLevelTrainer(special_tokens=specials, show_progress=False)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
    else:
        raise ValueError(f"kind: expected 'word' or 'bpe', got {kind!r}")
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def toy_llama(vocab_size: int = 384, hidden: int = 64, layers: int = 2, heads: int = 4,
              kv_heads: int = 2, intermediate: int = 96, seed: int = 0, std: float = 0.08,
              eos_token_id: int | None = 2, dtype: torch.dtype = torch.float32):
    """A random-weight LlamaForCausalLM (weights ~ N(0, std), so outputs are not constant)."""
    import transformers
    cfg = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=512, initializer_range=std, bos_token_id=1,
        eos_token_id=eos_token_id, pad_token_id=0, tie_word_embeddings=False)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


def toy_gpt2(vocab_size: int = 384, hidden: int = 64, layers: int = 2, heads: int = 4,
             seed: int = 0, std: float = 0.08, eos_token_id: int | None = 2,
             dtype: torch.dtype = torch.float32):
    """A random-weight GPT2LMHeadModel."""
    import transformers
    cfg = transformers.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers,
                                  n_head=heads, n_positions=512, initializer_range=std,
                                  bos_token_id=1, eos_token_id=eos_token_id)
    torch.manual_seed(seed)
    return transformers.GPT2LMHeadModel(cfg).to(dtype).eval()


def save_toy_model(model, tokenizer, path) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face model directory."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(p)
    if tokenizer is not None:
        tokenizer.save_pretrained(p)
    return p


def random_adapter(model, path, target_modules, name: str | None = None,
                   sparse_rate: float = 0.05, scale: float = 0.3, seed: int = 0,
                   cache_dir=None, decomposition=None, pattern_seed: int = 0,
                   explicit_pattern: bool = False, category_mode: str = "per_role"):
    """Write a random-valued FRoD adapter for ``model`` to ``path`` and return its AdapterFile.

    ``dl`` ~ scale * l * N(0, 1) (relative to the layer's own scales) and ``s`` ~
    scale * mean(l) * N(0, 1), so the adapted model differs clearly from the base. Uses the
    method's ``decompose`` / ``sparse_pattern`` conventions and ``write_adapter``.
    ``pattern_seed`` != 0 is stored as the config's pattern seed (own default patterns);
    ``explicit_pattern`` stores a random pattern (rows/cols) per layer, like an imported
    adapter.
    """
    from ..method.adapter_io import (FORMAT_VERSION, AdapterConfig, AdapterFile, LayerDelta,
                                     base_fields, write_adapter)
    from ..method.decompose import decompose
    from ..method.patterns import pattern_size, positions_to_pairs
    d = decomposition or decompose(model, target_modules, cache_dir=cache_dir, progress=False,
                                   category_mode=category_mode)
    g = torch.Generator().manual_seed(seed)
    cats, layers = {}, {}
    for key, cat in d.categories.items():
        n = cat.in_features
        k = pattern_size(n, sparse_rate)
        cats[key] = {"out": cat.out_features, "in": n, "k": k, "layers": list(cat.layers),
                     "fingerprint": cat.fingerprint}
        for lname in cat.layers:
            l = d.layers[lname].l.double().cpu()
            dl = scale * l * torch.randn(n, generator=g, dtype=torch.float64)
            s = scale * l.mean() * torch.randn(k, generator=g, dtype=torch.float64)
            rows = cols = None
            if explicit_pattern:
                pos = torch.randperm(n * (n - 1), generator=g)[:k].sort().values
                rows, cols = positions_to_pairs(pos, n)
            layers[lname] = LayerDelta(dl.to(torch.float32), s.to(torch.float32), rows, cols)
    tm = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    cfg = AdapterConfig(FORMAT_VERSION, d.fingerprint, tm, float(sparse_rate), int(pattern_seed),
                        d.alpha, cats, {}, **base_fields(d))
    af = AdapterFile(name or Path(path).name, cfg, layers)
    write_adapter(af, path)
    return af


def merged_weights(model, adapter, decomposition=None, cache_dir=None) -> dict:
    """Dense float64 ``W' = U (diag(l + dl) + S) V^T`` per adapted layer (out, in), for
    checking the engine against a plain model with the adapter merged in. ``model`` (or
    ``decomposition``) must be the base the adapter was trained on, in its dtype: AdapterError
    otherwise (its fingerprints seed the patterns)."""
    from ..method.decompose import decompose
    from ..method.delta import adapted_weight
    from ..method.patterns import delta_pattern
    from ..method.categories import decomposition_category_mode
    d = decomposition or decompose(model, sorted(adapter.layers), alpha=adapter.config.alpha,
                                   cache_dir=cache_dir, progress=False,
                                   category_mode=decomposition_category_mode(
                                       adapter.config.categories))
    from ..method.adapter_io import check_against
    # the patterns are seeded by the category fingerprints: a decomposition of another base
    # (e.g. ``model`` cast to another dtype) would silently give other patterns
    check_against(adapter, d)
    out = {}
    for lname, delta in adapter.layers.items():
        b = d.layers[lname]
        cat = d.categories[b.category]
        p = delta_pattern(delta, d, cat.key, adapter.config.seed)
        out[lname] = adapted_weight(b.U.cpu(), b.l.cpu(), cat.V.cpu(), delta.dl, delta.s, p.rows,
                                    p.cols, dtype=torch.float64, compute=torch.float64)
    return out


def load_merged(model, weights: dict) -> None:
    """Overwrite ``model``'s linear weights in place with ``weights`` (name -> (out, in))."""
    mods = dict(model.named_modules())
    with torch.no_grad():
        for lname, W in weights.items():
            m = mods[lname]
            if isinstance(m, torch.nn.Linear):
                m.weight.copy_(W.to(m.weight.dtype))
            else:                                   # Conv1D stores (in, out)
                m.weight.copy_(W.T.to(m.weight.dtype))
