"""Small offline models for demos, tests and benchmarks (no Hugging Face hub needed).

``toy_tokenizer()`` trains a byte-level BPE tokenizer on a built-in paragraph (deterministic,
a second or less); ``toy_llama()`` / ``toy_gpt2()`` build random-weight models whose vocab
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


def toy_tokenizer(vocab_size: int = 384):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``CORPUS`` with special
    tokens <pad>=0, <s>=1, </s>=2 (bos/eos)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>")


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
