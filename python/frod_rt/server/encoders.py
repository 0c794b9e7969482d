"""Encoder routes: ``POST /v1/embeddings`` (OpenAI's shape) and ``POST /v1/classify``
(vLLM's shape, also at ``/classify``), served when the base is an encoder (BERT family).

``model`` names an adapter or the base (or, with ``adapter_weights``, the base and a
blend of adapters). ``input``: a string, a list of strings, a list of
token ids or a list of token-id lists; each entry is one text of one packed forward pass
(``Engine.embed`` / ``Engine.classify``), so a response equals what those calls return for
the same list. A text longer than the model's ``max_model_len`` is refused (400), not
truncated.
"""
from __future__ import annotations

import asyncio
import base64
import time
from typing import Literal, Optional, Union

from pydantic import BaseModel

from .errors import APIError
from .generation import new_id, to_api_error
from .limits import check_prompts
from .protocol import _LENIENT, check_unknown_fields, entries_of

Inputs = Union[str, list[str], list[int], list[list[int]]]


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings."""
    model_config = _LENIENT
    model: str
    input: Inputs
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Optional[int] = None
    user: Optional[str] = None
    adapter_weights: Optional[dict[str, float]] = None    # a blend (``model`` = the base)


class ClassifyRequest(BaseModel):
    """POST /v1/classify (vLLM's ``/classify`` body)."""
    model_config = _LENIENT
    model: str
    input: Inputs
    user: Optional[str] = None
    adapter_weights: Optional[dict[str, float]] = None


def token_counts(engine, texts: list) -> list[int]:
    """Tokens per text; 400 naming ``input`` for an empty or too long text, an id out of
    the vocabulary, or text without a tokenizer."""
    vocab = engine.hf_model.config.vocab_size
    out = []
    for i, t in enumerate(texts):
        if isinstance(t, str):
            if engine.tokenizer is None:
                raise APIError(400, "input: text needs a tokenizer; send token ids",
                               param="input")
            n = len(engine.tokenizer(t)["input_ids"])
        else:
            if t and (min(t) < 0 or max(t) >= vocab):
                raise APIError(400, f"input[{i}]: token ids must lie in [0, {vocab})",
                               param="input")
            n = len(t)
        if n == 0:
            raise APIError(400, f"input[{i}]: empty (no tokens)", param="input")
        if n > engine.max_model_len:
            raise APIError(400, f"input[{i}]: {n} tokens exceed the model's maximum of "
                           f"{engine.max_model_len}", param="input")
        out.append(n)
    return out


def _encode_b64(row) -> str:
    """OpenAI's base64 encoding: the float32 little-endian bytes of the vector."""
    return base64.b64encode(row.numpy().astype("<f4").tobytes()).decode("ascii")


def add_encoder_routes(app, state) -> None:
    """Register /v1/embeddings, /v1/classify and /classify on ``app``."""
    engine = state.engine
    char_limit = state.config.prompt_char_limit(engine.max_model_len)

    async def prepare(req):
        if state.config.strict_fields:
            check_unknown_fields(req)
        adapter = state.resolve_adapter(req.model, req.adapter_weights)
        if not getattr(engine, "is_encoder", False):
            raise APIError(400, f"model {req.model!r} generates text; embeddings and "
                           "classification need an encoder base (BertModel, "
                           "BertForSequenceClassification)", param="model",
                           code="unsupported_model")
        with state.counting_errors(req.model, adapter) as label:
            texts = entries_of(req.input, "input")
            check_prompts(texts, char_limit, engine.max_model_len, field="input")
            counts = await asyncio.to_thread(token_counts, engine, texts)
        for n in counts:
            state.metrics.request_submitted(label, n)
        return adapter, label, texts, counts

    async def run(fn, texts, adapter, label):
        try:
            return await asyncio.to_thread(fn, texts, adapter)
        except Exception as exc:               # noqa: BLE001 - answered for this request alone
            state.metrics.request_error(label)
            raise to_api_error(exc) from None

    def usage(counts):
        return {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}

    @app.post("/v1/embeddings")
    async def embeddings(req: EmbeddingRequest):
        adapter, label, texts, counts = await prepare(req)
        hidden = engine.hf_model.config.hidden_size
        if req.dimensions is not None and req.dimensions != hidden:
            state.metrics.request_error(label)
            raise APIError(400, f"dimensions: this model's embeddings have {hidden} "
                           "dimensions (no truncation)", param="dimensions")
        emb = (await run(engine.embed, texts, adapter, label)).float().cpu()
        enc = _encode_b64 if req.encoding_format == "base64" else (lambda r: r.tolist())
        data = [{"object": "embedding", "index": i, "embedding": enc(emb[i])}
                for i in range(emb.shape[0])]
        return {"object": "list", "data": data, "model": req.model, "usage": usage(counts)}

    async def classify(req: ClassifyRequest):
        adapter, label, texts, counts = await prepare(req)
        logits = (await run(engine.classify, texts, adapter, label)).float().cpu()
        probs = logits.softmax(-1)
        id2label = getattr(engine.hf_model.config, "id2label", None) or {}
        data = []
        for i in range(logits.shape[0]):
            top = int(probs[i].argmax())
            data.append({"index": i, "label": str(id2label.get(top, top)),
                         "probs": probs[i].tolist(), "logits": logits[i].tolist(),
                         "num_classes": int(logits.shape[1])})
        return {"id": new_id("classify"), "object": "list", "created": int(time.time()),
                "model": req.model, "data": data, "usage": usage(counts)}

    app.post("/v1/classify")(classify)
    app.post("/classify")(classify)
