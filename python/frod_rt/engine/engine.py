"""The serving engine: many FRoD adapters on one base model, continuous batching.

A step is schedule -> run -> postprocess (nano-vllm shape, no global context): the
scheduler picks sequences and chunk sizes, the model runner feeds one flat batch mixing
prefill and decode rows of any adapters, the sampler picks tokens, and postprocessing
detokenizes, checks stop conditions and retires finished requests.
"""
from __future__ import annotations

import itertools
import math
import os
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Iterator

import torch

from .adapter_manager import AdapterManager
from .blends import BlendCache
from .block_manager import BlockManager, KVCache
from .detokenizer import flush_text, update_text
from .errors import EngineOverloadedError, RequestTooLargeError, UnknownAdapterError
from .model_runner import DECODERS, ENCODERS, ModelRunner, encode, wrap_model
from .models.layers import adapted_layers
from .outputs import CompletionOutput, GenerationResult, RequestOutput
from .sampler import Sampler
from .sampling import SamplingParams
from .scheduler import ScheduledBatch, Scheduler
from .sequence import Sequence, Status

_LIMITS = {
    "max_num_seqs": 64,             # running sequences at most
    "max_batch_tokens": 2048,       # tokens per step at most
    "prefill_chunk": None,          # prompt chunk size (default max_batch_tokens - max_num_seqs)
    "kv_cache_tokens": 16384,       # KV cache capacity in tokens (rounded up to blocks)
    "kv_blocks": None,              # or the number of blocks directly
    "block_size": 16,               # tokens per KV block
    "max_model_len": None,          # prompt + output tokens at most (default: model's limit)
    "max_waiting": 4096,            # queued requests at most (EngineOverloadedError beyond)
    "device_adapter_capacity": 16,  # adapter slots on the device
    "host_adapter_capacity": 256,   # parsed adapters kept in host memory
    "cache_dir": None,              # decomposition cache directory
    "progress": False,              # progress bar while decomposing
    "merge_hot": (),                # adapter names served with a merged weight (opt-in)
    "auto_merge": False,            # merge a dominant adapter automatically (opt-in, not batch-invariant)
    "auto_merge_window": 8,         # steps over which row shares are counted
    "auto_merge_share": 0.5,        # merge an adapter holding at least this share of the rows
    "auto_merge_budget_mb": None,   # merged weights at most (default: one copy of the adapted weights)
    "blend_cache_capacity": 32,     # distinct blends kept when unused (see blends.py)
    "record_logits": False,         # keep each sampled step's logits on the Sequence (tests)
    "admission_aging_steps": 16,    # skips for want of an adapter slot before others must wait
}


def _so_far(seq: Sequence, reason: str | None) -> CompletionOutput:
    """vLLM-shaped cumulative output of ``seq`` (text and token ids emitted so far)."""
    return CompletionOutput(0, seq.text[:seq.emitted_text_len],
                            list(seq.output_ids[:seq.emitted_tokens]), reason)


def _load_hf(path: Path, dtype, device):
    """Load a model directory with the right transformers auto class for its architecture."""
    import transformers
    cfg = transformers.AutoConfig.from_pretrained(path)
    archs = list(getattr(cfg, "architectures", None) or [])
    supported = [a for a in archs if a in DECODERS or a in ENCODERS]
    if not supported:
        raise ValueError(f"{path}: architecture {archs or '(none)'} is not supported; supported: "
                         f"{', '.join(sorted(DECODERS) + sorted(ENCODERS))}")
    cls = getattr(transformers, supported[0])
    model = cls.from_pretrained(path, dtype=dtype) if dtype is not None else \
        cls.from_pretrained(path)
    return model


def _as_dtype(dtype):
    """None, a torch.dtype or its name ("bfloat16", "torch.float16") -> torch.dtype | None."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    got = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(got, torch.dtype) or not got.is_floating_point:
        raise TypeError(f"dtype: expected a floating torch dtype or its name, got {dtype!r}")
    return got


class Engine:
    """Serves a base model and any number of FRoD adapters (see ``Engine.load``)."""

    def __init__(self, model, tokenizer=None, device="cpu", dtype=None, base_name=None,
                 **limits):
        bad = sorted(set(limits) - set(_LIMITS))
        if bad:
            raise TypeError(f"unknown engine option(s): {', '.join(bad)}; "
                            f"expected some of {', '.join(sorted(_LIMITS))}")
        lim = dict(_LIMITS, **limits)
        self.limits = lim
        self.device = torch.device(device)
        dtype = _as_dtype(dtype)
        model = model.to(device=self.device, dtype=dtype) if dtype is not None else \
            model.to(self.device)
        model.eval().requires_grad_(False)
        self.hf_model = model
        self.dtype = next(model.parameters()).dtype
        self.tokenizer = tokenizer
        self.base_name = base_name or str(getattr(model.config, "name_or_path", "") or
                                          type(model).__name__) or "base"
        self.model = wrap_model(model)
        self.is_encoder = type(model).__name__ in ENCODERS
        self.pool = AdapterManager(model, adapted_layers(self.model), self.device, self.dtype,
                                   device_capacity=int(lim["device_adapter_capacity"]),
                                   host_capacity=int(lim["host_adapter_capacity"]),
                                   cache_dir=lim["cache_dir"], progress=bool(lim["progress"]),
                                   merge_hot=lim["merge_hot"])
        self._work_dir: Path | None = None       # converted adapters (PEFT imports, renames)
        self.pool.heads = dict(getattr(self.model, "heads", {}))
        self.blends = BlendCache(self.pool, int(lim["blend_cache_capacity"]))
        self._lock = threading.Lock()            # guards the incoming / abort queues
        self._model_lock = threading.RLock()     # one forward at a time
        self._incoming: deque[Sequence] = deque()
        self._aborts: set[str] = set()
        self._seqs: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self.counters = {"requests_total": 0, "requests_finished_total": 0,
                         "requests_aborted_total": 0, "tokens_generated_total": 0,
                         "requests_failed_total": 0,
                         "prompt_tokens_total": 0, "steps_total": 0,
                         "batch_tokens_total": 0}
        cfg = model.config
        model_len = getattr(cfg, "max_position_embeddings", None) or \
            getattr(cfg, "n_positions", None) or 2048
        if self.is_encoder:
            self.max_model_len = int(lim["max_model_len"] or model_len)
            self.scheduler = None
            return
        bs = int(lim["block_size"])
        max_seqs, max_tokens = int(lim["max_num_seqs"]), int(lim["max_batch_tokens"])
        if bs < 1 or max_seqs < 1 or max_tokens <= max_seqs:
            raise ValueError(f"need block_size >= 1, max_num_seqs >= 1 and max_batch_tokens > "
                             f"max_num_seqs; got {bs}, {max_seqs}, {max_tokens}")
        chunk = int(lim["prefill_chunk"] or (max_tokens - max_seqs))
        if not 1 <= chunk <= max_tokens:
            raise ValueError(f"prefill_chunk: expected 1..max_batch_tokens, got {chunk}")
        nblocks = int(lim["kv_blocks"] or math.ceil(int(lim["kv_cache_tokens"]) / bs))
        m = self.model
        self.kv = KVCache(m.num_layers, nblocks, bs, m.num_kv_heads, m.head_dim, self.dtype,
                          self.device)
        self.block_manager = BlockManager(nblocks, bs)
        self.max_model_len = int(min(lim["max_model_len"] or model_len, model_len,
                                     nblocks * bs))
        self.scheduler = Scheduler(self.block_manager, self.pool, max_seqs, max_tokens, chunk,
                                   max_skips=int(lim["admission_aging_steps"]))
        auto = None
        if lim["auto_merge"]:
            from .auto_merge import AutoMerger
            mb = lim["auto_merge_budget_mb"]
            auto = AutoMerger(adapted_layers(m).values(), window=int(lim["auto_merge_window"]),
                              share=float(lim["auto_merge_share"]),
                              budget_bytes=None if mb is None else int(float(mb) * 2**20))
        self.auto_merger = auto
        self.runner = ModelRunner(m, self.kv, self.device, auto_merge=auto)
        self.sampler = Sampler()
        # EOS: the tokenizer's and the model's generation config's (either stops a request)
        eos: set[int] = set()
        for src in (getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None,
                    getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                    getattr(cfg, "eos_token_id", None)):
            if src is not None:
                eos.update(src if isinstance(src, (list, tuple)) else [src])
        self.eos_token_ids = eos

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def load(cls, base, adapters=None, device="cpu", dtype=None, tokenizer=None,
             **limits) -> "Engine":
        """Build an engine.

        Args:
            base: a Hugging Face model directory, or a loaded transformers model
                (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, GPT2LMHeadModel,
                BertModel, BertForSequenceClassification).
            adapters: adapter directories (named by their basename) or {name: dir}.
            device: "cpu" or "cuda[:i]". dtype: torch dtype (default: the model's).
            tokenizer: for a loaded model (a directory's own tokenizer is loaded otherwise).
            limits: see ``_LIMITS`` in this module (max_num_seqs, max_batch_tokens,
                kv_cache_tokens / kv_blocks, block_size, device_adapter_capacity, ...).
        """
        base_name = None
        dtype = _as_dtype(dtype)
        if isinstance(base, (str, os.PathLike)):
            path = Path(base)
            if not path.is_dir():
                raise FileNotFoundError(f"base model directory not found: {path}")
            model = _load_hf(path, dtype, device)
            if tokenizer is None:
                try:
                    import transformers
                    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
                except Exception:      # noqa: BLE001 - token-id-only use stays possible
                    tokenizer = None
            base_name = path.name
        elif isinstance(base, torch.nn.Module):
            model = base
        else:
            raise TypeError(f"base: expected a model directory or a transformers model, "
                            f"got {type(base).__name__}")
        eng = cls(model, tokenizer=tokenizer, device=device, dtype=dtype, base_name=base_name,
                  **limits)
        if adapters:
            if isinstance(adapters, dict):
                items = list(adapters.items())
            elif isinstance(adapters, (list, tuple)):
                items = [(Path(p).name, p) for p in adapters]
            else:
                raise TypeError("adapters: expected a list of directories or {name: directory}")
            for name, p in items:
                eng.add_adapter(name, p)
        return eng

    # ---- adapters ------------------------------------------------------------------------
    def add_adapter(self, name: str, path) -> None:
        """Load and validate adapter ``name`` from ``path``: a frod_rt adapter directory, or a
        PEFT FRoD directory (imported on load in frod_rt's basis). AdapterError (a ValueError)
        or FileNotFoundError on a bad adapter, which is refused; the others keep serving. An
        adapter of another model is refused with "trained for <model>, this base is <model>";
        a task-model prefix (``bert.``) is mapped (see ``adapter_sources``)."""
        from ..method.adapter_io import AdapterError
        from .adapter_sources import prepare_adapter_dir
        if name == self.base_name:
            raise ValueError(f"adapter name {name!r} is the base model's name")
        if name in self.pool:                 # before any conversion work
            raise ValueError(f"adapter {name!r} is already loaded; remove it first")
        p = Path(path)
        parsed = None
        if p.is_dir():
            if self._work_dir is None:
                import tempfile
                self._work_dir = Path(tempfile.mkdtemp(prefix="frod_rt-adapters-"))
            try:
                p, parsed = prepare_adapter_dir(name, p, self.hf_model, self._work_dir,
                                                cache_dir=self.limits["cache_dir"])
            except AdapterError as e:
                raise type(e)(f"adapter {name!r} ({path}) refused: {e}") from e
        try:
            self.pool.add(name, p, file=parsed)
        except AdapterError as e:
            self._drop_converted(p)
            if p != Path(path):        # name the user's directory, not the converted copy
                raise type(e)(str(e).replace(str(p), str(path))) from e
            raise
        except BaseException:
            self._drop_converted(p)
            raise

    def _drop_converted(self, path: Path | None) -> None:
        """Delete ``path`` when it is a converted copy this engine wrote (PEFT import, prefix
        mapping) under its work directory; the user's own directories are never touched."""
        if path is not None and self._work_dir is not None and Path(path).parent == self._work_dir:
            import shutil
            shutil.rmtree(path, ignore_errors=True)

    def remove_adapter(self, name: str) -> None:
        """Unregister ``name`` (UnknownAdapterError, a KeyError, if unknown). Requests bind to
        the adapter *instance* they were submitted with: running ones (preempted ones too)
        finish with it, queued ones that have not started end with "adapter ... was removed"
        (``finish_reason`` "abort"); a later ``add_adapter`` of the same name is a new
        instance that never serves earlier requests. Blends containing ``name`` end the
        same way."""
        e = self.pool.entries.get(name)
        self.pool.remove(name)
        self.blends.drop_component(name)
        # its requests that started hold the parsed file; the instance never re-reads its
        # directory once removed, so a converted copy can go now (not at close(): an engine
        # that hot-loads PEFT adapters for days would fill its disk)
        self._drop_converted(e.path if e is not None else None)

    def adapters(self) -> list[str]:
        return self.pool.names()

    def _check_adapter(self, adapter) -> str | tuple | None:
        """None (base), an adapter name, or a blend's canonical spec ((name, weight), ...)
        for ``{name: weight}`` (a blend of one adapter with weight 1 is that adapter)."""
        if adapter is None or adapter == "" or adapter == self.base_name:
            return None
        if isinstance(adapter, dict):
            spec = self.blends.spec(adapter)
            return spec[0][0] if len(spec) == 1 and spec[0][1] == 1.0 else spec
        if not isinstance(adapter, str):
            raise TypeError(f"adapter: expected a name, a {{name: weight}} blend or None, got "
                            f"{type(adapter).__name__}")
        if adapter not in self.pool:
            raise UnknownAdapterError(adapter, self.pool.names())
        return adapter

    # ---- requests ------------------------------------------------------------------------
    def _tokenize(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("prompt is text but the engine has no tokenizer; "
                                 "pass token ids or a tokenizer")
            return list(self.tokenizer(prompt)["input_ids"])
        if isinstance(prompt, (list, tuple)) and all(
                isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return list(prompt)
        if isinstance(prompt, torch.Tensor) and prompt.dim() == 1:
            return [int(t) for t in prompt.tolist()]
        raise TypeError("prompt: expected a string or a list of token ids")

    def add_request(self, prompt, adapter=None, sampling=None, request_id=None) -> str:
        """Queue a request (thread-safe). Returns its id. ``adapter``: a name, None (base),
        or a blend ``{name: weight, ...}`` (served as one virtual adapter, see blends.py).

        Raises UnknownAdapterError, ValueError (bad sampling / empty or too long prompt, or
        adapters that cannot be blended: BlendError), EngineOverloadedError when
        ``max_waiting`` requests are queued."""
        if self.is_encoder:
            raise ValueError("this engine serves an encoder model: use embed() / classify()")
        adapter = self._check_adapter(adapter)
        sp = SamplingParams.build(sampling)
        ids = self._tokenize(prompt)
        if not ids:
            raise ValueError("prompt: empty (no tokens)")
        vocab = self.hf_model.config.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"prompt: token ids must lie in [0, {vocab})")
        if len(ids) + sp.max_tokens > self.max_model_len:
            raise RequestTooLargeError(
                f"prompt ({len(ids)} tokens) + max_tokens ({sp.max_tokens}) exceeds the "
                f"engine's max_model_len {self.max_model_len}")
        ref = None
        if isinstance(adapter, tuple):              # a blend: its instance, bound now
            ref = self.blends.bind(adapter)
            adapter = ref.name
        try:
            return self._queue(prompt, ids, adapter, sp, request_id, ref)
        except BaseException:
            self.pool.unbind(ref)
            raise

    def _queue(self, prompt, ids, adapter, sp, request_id, ref) -> str:
        """Queue the request; ``ref``: its bound adapter instance (None: bind ``adapter``)."""
        with self._lock:
            if request_id is None:
                request_id = f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
            elif request_id in self._seqs:
                raise ValueError(f"request_id {request_id!r} is already in use")
            queued = len(self._incoming) + len(self.scheduler.waiting)
            if queued >= int(self.limits["max_waiting"]):
                raise EngineOverloadedError(
                    f"engine overloaded: {queued} requests waiting (max_waiting="
                    f"{self.limits['max_waiting']}); retry later")
            if ref is None:
                ref = self.pool.bind(adapter)     # the instance this request computes with
            seq = Sequence(str(request_id), prompt, ids, adapter, sp, adapter_ref=ref)
            if self.limits["record_logits"]:
                seq.logits = []
            self._seqs[seq.request_id] = seq
            self._incoming.append(seq)
            self.counters["requests_total"] += 1
        self.pool.prefetch(seq.adapter_ref)
        return seq.request_id

    def abort_request(self, request_id: str) -> None:
        """Abort a request (thread-safe); it finishes with reason "abort" at the next step.
        Unknown or already finished ids are ignored."""
        with self._lock:
            if request_id in self._seqs:
                self._aborts.add(request_id)

    def has_unfinished(self) -> bool:
        if self.scheduler is None:            # an encoder: nothing is ever queued
            return False
        with self._lock:
            return bool(self._incoming or self._aborts) or self.scheduler.has_unfinished()

    def get_sequence(self, request_id: str) -> Sequence | None:
        """The live Sequence of a request (None once it has finished)."""
        return self._seqs.get(request_id)

    # ---- one step -------------------------------------------------------------------------
    def _finish(self, seq: Sequence, reason: str, outs: list[RequestOutput]) -> None:
        sched = self.scheduler
        sched.remove(seq) if seq.status != Status.RUNNING else sched.finish(seq)
        ref, seq.adapter_ref = seq.adapter_ref, None
        self.pool.unbind(ref)
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        seq.finished_at = time.perf_counter()
        new_ids = seq.output_ids[seq.emitted_tokens:]
        seq.emitted_tokens = seq.num_output
        text = flush_text(seq) if reason != "abort" or self.tokenizer is not None else ""
        outs.append(RequestOutput(seq.request_id, new_ids, text, True, reason, seq.error,
                                  seq.timings(), [_so_far(seq, reason)]))
        with self._lock:
            self._seqs.pop(seq.request_id, None)     # finished: the engine forgets it
        self.counters["requests_finished_total"] += 1
        if reason == "abort":
            self.counters["requests_aborted_total"] += 1
        elif reason == "error":
            self.counters["requests_failed_total"] += 1

    def _fail(self, seq: Sequence, why: str, outs: list[RequestOutput]) -> None:
        """End ``seq`` alone with finish reason "error" (its batch mates go on)."""
        seq.error = why
        self._finish(seq, "error", outs)

    def _forward(self, batch) -> tuple[list[Sequence], torch.Tensor, list[tuple[Sequence, str]]]:
        """Run the batch; if the forward raises, run each sequence alone so that only the ones
        that fail by themselves are failed. Returns (sequences to sample, their logits rows,
        [(failed sequence, why)]). The isolated re-run rewrites the same KV slots."""
        try:
            sampled, logits = self.runner.run(batch)
            return sampled, logits, []
        except Exception as exc:          # noqa: BLE001 - find the culprit, spare the others
            if len(batch) == 1:
                return [], None, [(batch.seqs[0], f"engine step failed: "
                                                  f"{type(exc).__name__}: {exc}")]
        sampled, rows, failed = [], [], []
        for seq, n in zip(batch.seqs, batch.num_tokens):
            try:
                s, lg = self.runner.run(ScheduledBatch([seq], [n]))
            except Exception as exc:      # noqa: BLE001
                failed.append((seq, f"engine step failed for this request: "
                                    f"{type(exc).__name__}: {exc}"))
                continue
            sampled.extend(s)
            rows.append(lg)
        logits = torch.cat(rows) if rows and sampled else None
        return sampled, logits, failed

    def _discard(self, request_ids) -> None:
        """Forget requests at once without a step (the offline API's recovery after a step
        raised): out of every queue, blocks and adapter pins released."""
        with self._lock:
            for rid in request_ids:
                seq = self._seqs.pop(rid, None)
                self._aborts.discard(rid)
                if seq is None:
                    continue
                if seq in self._incoming:
                    self._incoming.remove(seq)
                elif self.scheduler is not None:
                    if seq.status == Status.RUNNING:
                        self.scheduler.finish(seq)
                    else:
                        self.scheduler.remove(seq)
                seq.status = Status.FINISHED
                seq.finish_reason = seq.finish_reason or "abort"

    def step(self) -> list[RequestOutput]:
        """Run one engine step (call from ONE thread). Returns the outputs it produced."""
        if self.is_encoder:
            raise ValueError("this engine serves an encoder model: use embed() / classify()")
        outs: list[RequestOutput] = []
        with self._lock:
            incoming, self._incoming = list(self._incoming), deque()
            aborts, self._aborts = self._aborts, set()
        for seq in incoming:
            self.scheduler.add(seq)
        for rid in aborts:
            seq = self._seqs.get(rid)
            if seq is not None and seq.status != Status.FINISHED:
                self._finish(seq, "abort", outs)
        with self._model_lock:
            batch = self.scheduler.schedule()
            for seq, why in self.scheduler.failed:
                seq.error = why
                self._finish(seq, "abort", outs)
            self.scheduler.failed.clear()
            if len(batch) == 0:
                return outs
            now = time.perf_counter()
            for seq in batch.seqs:
                if seq.first_scheduled is None:
                    seq.first_scheduled = now
            sampled, logits, failed = self._forward(batch)
            tokens, errors = self.sampler(logits, sampled) if sampled else ([], {})
        self.counters["steps_total"] += 1
        self.counters["batch_tokens_total"] += batch.total_tokens
        for seq, n in zip(batch.seqs, batch.num_tokens):
            if seq.num_computed == 0 and seq.preemptions == 0:
                self.counters["prompt_tokens_total"] += seq.prompt_len
            seq.num_computed += n
        for seq, why in failed:
            self._fail(seq, why, outs)
        now = time.perf_counter()
        for i, (seq, tok) in enumerate(zip(sampled, tokens)):
            if tok is None:
                self._fail(seq, errors[i], outs)
                continue
            try:
                self._postprocess(seq, tok, logits[i], now, outs)
            except Exception as exc:      # noqa: BLE001 - e.g. a tokenizer that cannot decode
                if seq.status != Status.FINISHED:
                    self._fail(seq, f"postprocessing failed: {type(exc).__name__}: {exc}", outs)
        return outs

    def _postprocess(self, seq: Sequence, tok: int, logits_row, now: float,
                     outs: list[RequestOutput]) -> None:
        """Append the sampled token, detokenize, check the stop conditions."""
        seq.tokens.append(tok)
        if seq.logits is not None:
            seq.logits.append(logits_row.detach().cpu().clone())
        if seq.first_token is None:
            seq.first_token = now
        self.counters["tokens_generated_total"] += 1
        sp = seq.sampling
        new_text, hit = update_text(seq, self.tokenizer)
        reason = None
        if hit or tok in sp.stop_token_ids or (not sp.ignore_eos and tok in self.eos_token_ids):
            reason = "stop"
        elif seq.num_output >= sp.max_tokens or seq.num_tokens >= self.max_model_len:
            reason = "length"
        if reason is not None:
            seq.emitted_text_len -= len(new_text)
            self._finish(seq, reason, outs)
        else:
            new_ids = seq.output_ids[seq.emitted_tokens:]
            seq.emitted_tokens = seq.num_output
            outs.append(RequestOutput(seq.request_id, new_ids, new_text, False, None,
                                      outputs=[_so_far(seq, None)]))

    # ---- offline helpers -------------------------------------------------------------------
    @staticmethod
    def _result(seq: Sequence) -> GenerationResult:
        return GenerationResult(seq.request_id, seq.adapter, seq.prompt, seq.text,
                                seq.output_ids, seq.finish_reason or "abort", seq.prompt_len,
                                seq.timings(), seq.error)

    def generate(self, prompts, adapter=None, adapters=None, sampling=None, progress=False,
                 **sampling_kw) -> list[GenerationResult]:
        """Generate for one prompt or a list of prompts (text or token ids), all batched.

        ``adapter`` applies to every prompt; ``adapters`` gives one name (or None) per prompt.
        A name may be replaced by a blend ``{name: weight, ...}`` (see ``add_request``).
        Returns one GenerationResult per prompt, in order. Drives ``step()`` itself, so do not
        call it while another thread runs the step loop.
        """
        single = isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                              and isinstance(prompts[0], int))
        plist = [prompts] if single else list(prompts)
        if adapters is not None:
            if adapter is not None:
                raise ValueError("give either adapter= (one for all) or adapters= (per prompt)")
            if len(adapters) != len(plist):
                raise ValueError(f"adapters: expected {len(plist)} entries (one per prompt), "
                                 f"got {len(adapters)}")
            alist = list(adapters)
        else:
            alist = [adapter] * len(plist)
        sp = SamplingParams.build(sampling, **sampling_kw)
        for a in alist:
            self._check_adapter(a)
        ids, seqs = [], {}
        try:
            for p, a in zip(plist, alist):
                ids.append(self.add_request(p, a, sp))
                seqs[ids[-1]] = self._seqs[ids[-1]]
        except Exception:
            for rid in ids:
                self.abort_request(rid)
            raise
        pending = set(ids)
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(ids), desc="generate")
        try:
            while pending:
                for out in self.step():
                    if out.finished and out.request_id in pending:
                        pending.discard(out.request_id)
                        if bar is not None:
                            bar.update(1)
        except BaseException:
            self._discard(pending)        # a later generate() starts clean
            raise
        finally:
            if bar is not None:
                bar.close()
        return [self._result(seqs[r]) for r in ids]

    def stream(self, prompt, adapter=None, sampling=None, **sampling_kw
               ) -> Iterator[RequestOutput]:
        """Yield the RequestOutputs of one request as they are produced (drives step()).

        Each carries this step's delta (``new_text``, ``new_token_ids``) and, as vLLM's
        streaming does, the cumulative ``outputs[0].text`` / ``outputs[0].token_ids``; the last
        has ``finished=True`` and ``finish_reason``."""
        sp = SamplingParams.build(sampling, **sampling_kw)
        rid = self.add_request(prompt, adapter, sp)
        try:
            done = False
            while not done:
                for out in self.step():
                    if out.request_id == rid:
                        yield out
                        done = out.finished
        finally:
            seq = self._seqs.get(rid)
            if seq is not None and seq.status != Status.FINISHED:
                self.abort_request(rid)
                while self.has_unfinished() and seq.status != Status.FINISHED:
                    self.step()
            self._seqs.pop(rid, None)

    # ---- encoders ----------------------------------------------------------------------------
    def _encode(self, texts, adapter, head):
        """Tokenize, pin the adapters, run the packed encoder and ``head(h, starts, lens,
        row_slots)`` (in slot order); returns head's (N, ...) result in the input order."""
        if not self.is_encoder:
            raise ValueError("embed/classify need an encoder model (BERT family)")
        single = isinstance(texts, str) or (isinstance(texts, (list, tuple)) and texts
                                            and isinstance(texts[0], int))
        tlist = [texts] if single else list(texts)
        if not tlist:
            raise ValueError("texts: empty list")
        alist = list(adapter) if isinstance(adapter, (list, tuple)) else [adapter] * len(tlist)
        if len(alist) != len(tlist):
            raise ValueError(f"adapter: expected {len(tlist)} names (one per text), got {len(alist)}")
        alist = [self._check_adapter(a) for a in alist]       # names, blend specs or None
        toks, types = [], []
        for t in tlist:
            if isinstance(t, str):
                if self.tokenizer is None:
                    raise ValueError("texts are strings but the engine has no tokenizer")
                enc = self.tokenizer(t, truncation=True, max_length=self.max_model_len)
                toks.append(list(enc["input_ids"]))
                types.append(list(enc.get("token_type_ids") or [0] * len(toks[-1])))
            else:
                toks.append(self._tokenize(t)[: self.max_model_len])
                types.append([0] * len(toks[-1]))
                vocab = self.hf_model.config.vocab_size
                if toks[-1] and (min(toks[-1]) < 0 or max(toks[-1]) >= vocab):
                    raise ValueError(f"texts: token ids must lie in [0, {vocab})")
            if not toks[-1]:
                raise ValueError("texts: an entry has no tokens")
        with self._model_lock:
            slots = {}
            try:
                for a in dict.fromkeys(x for x in alist if x is not None):
                    ref = self.blends.bind(a) if isinstance(a, tuple) else self.pool.bind(a)
                    slots[a] = self._acquire_blocking(ref)
                row_slots = [slots[a] if a is not None else -1 for a in alist]
                order = sorted(range(len(tlist)), key=lambda i: row_slots[i])
                rs = [row_slots[i] for i in order]
                h, starts = encode(self.model, [toks[i] for i in order], rs, self.device,
                                   [types[i] for i in order])
                with torch.inference_mode():
                    res = head(h, starts, [len(toks[i]) for i in order], rs)
            finally:
                for s in slots.values():
                    self.pool.release(s)
        out = torch.empty_like(res)
        out[torch.tensor(order)] = res
        return out[0] if single else out

    def _acquire_blocking(self, ref) -> int:
        """Pin instance ``ref`` (bound by the caller; unbound here) on the device."""
        from .scheduler import AdapterUnavailable
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    slot = self.pool.acquire(ref)
                except AdapterUnavailable as e:
                    raise ValueError(str(e)) from None
                if slot is not None:
                    return slot
                if all(e is not None and e.pins for e in self.pool.slot_entry):
                    raise RuntimeError("every adapter slot is pinned; raise "
                                       "device_adapter_capacity")
                self.pool.ensure_host(ref, timeout=60)
            raise RuntimeError(f"adapter {ref.name!r} could not be loaded")
        finally:
            self.pool.unbind(ref)        # the pin (or the failure) now holds the instance

    def embed(self, texts, adapter=None, normalize: bool = True) -> torch.Tensor:
        """Sentence embeddings (N, hidden), float32: mean of the last hidden states over each
        text's tokens, L2-normalised (as sentence-transformers' all-MiniLM-L6-v2).
        ``texts``: a string / token-id list, or a list of them. ``adapter``: one name (or
        None, or a blend ``{name: weight}``) for all texts, or one per text."""
        def head(h, starts, lens, _):
            pooled = torch.stack([h[s:s + n].float().mean(0) for s, n in zip(starts, lens)])
            return torch.nn.functional.normalize(pooled, dim=-1) if normalize else pooled
        return self._encode(texts, adapter, head)

    def classify(self, texts, adapter=None) -> torch.Tensor:
        """Classification logits (N, num_labels), float32, from the [CLS] token through the
        pooler and classifier (BertForSequenceClassification)."""
        from .models.batch import AdapterBatch

        def head(h, starts, lens, row_slots):
            ab = AdapterBatch(row_slots, self.device)
            return self.model.classify(h, torch.tensor(starts, device=self.device), ab)
        return self._encode(texts, adapter, head)

    # ---- introspection -----------------------------------------------------------------------
    def stats(self) -> dict:
        with self._lock:
            s = dict(self.counters)
            s["queue_depth"] = len(self._incoming) + (len(self.scheduler.waiting)
                                                      if self.scheduler else 0)
        s["running"] = len(self.scheduler.running) if self.scheduler else 0
        if self.scheduler is not None:
            s["preemptions_total"] = self.scheduler.preemptions_total
            s["kv_blocks_total"] = self.block_manager.num_blocks
            s["kv_blocks_used"] = self.block_manager.num_used
            s["kv_cache_bytes"] = self.kv.nbytes()
        s.update(self.pool.stats())
        s["blends_cached"] = len(self.blends)
        s["blend_builds_total"] = self.blends.builds_total
        return s

    def close(self) -> None:
        self.pool.close()
        if self._work_dir is not None:
            import shutil
            shutil.rmtree(self._work_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return (f"Engine({self.base_name!r}, {type(self.hf_model).__name__}, device={self.device},"
                f" dtype={self.dtype}, adapters={len(self.pool.names())})")
