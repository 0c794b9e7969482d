"""Per-request sampling parameters."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    """How one request samples tokens.

    temperature 0 means greedy (argmax), and so does any temperature below 1e-5
    (``sampler.GREEDY_BELOW``, as vLLM); otherwise logits are divided by ``temperature``,
    filtered by ``top_k`` (0 = off) then ``top_p`` (nucleus, 1.0 = off) and sampled with a
    per-request ``torch.Generator`` seeded by ``seed`` (a random seed when None). Generation
    stops at ``max_tokens`` new tokens ("length"), at an EOS token unless ``ignore_eos``,
    at any of ``stop_token_ids`` or when the text contains one of ``stop`` ("stop"; the stop
    string itself is not part of the returned text).
    """
    max_tokens: int = 16
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) \
                or self.max_tokens < 1:
            raise ValueError(f"max_tokens: expected an integer >= 1, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or isinstance(self.temperature, bool) \
                or not (self.temperature >= 0.0) or self.temperature == float("inf"):
            raise ValueError(f"temperature: expected a finite number >= 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k: expected an integer >= 0 (0 = off), got {self.top_k!r}")
        if not isinstance(self.top_p, (int, float)) or isinstance(self.top_p, bool) \
                or not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p: expected a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not 0 <= self.seed < 2**64):
            raise ValueError(f"seed: expected None or an integer in [0, 2**64), got {self.seed!r}")
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if not isinstance(self.stop, (list, tuple)) or not all(
                isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop: expected a list of non-empty strings, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, (list, tuple)) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0
                for t in self.stop_token_ids):
            raise ValueError(
                f"stop_token_ids: expected a list of integers >= 0, got {self.stop_token_ids!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos: expected a bool, got {self.ignore_eos!r}")

    @classmethod
    def build(cls, sampling: "SamplingParams | dict | None" = None, **kw) -> "SamplingParams":
        """Merge a SamplingParams (or dict) with keyword overrides and validate the result.
        Unknown keywords raise TypeError naming them."""
        if sampling is None:
            base = {}
        elif isinstance(sampling, SamplingParams):
            base = dict(sampling.__dict__)
        elif isinstance(sampling, dict):
            base = dict(sampling)
        else:
            raise TypeError(f"sampling: expected SamplingParams, dict or None, "
                            f"got {type(sampling).__name__}")
        base.update(kw)
        names = set(cls.__dataclass_fields__)
        bad = sorted(set(base) - names)
        if bad:
            raise TypeError(f"unknown sampling parameter(s): {', '.join(bad)}; "
                            f"expected some of {', '.join(sorted(names))}")
        sp = cls(**base)
        sp.stop = list(sp.stop) if not isinstance(sp.stop, str) else [sp.stop]
        sp.stop_token_ids = list(sp.stop_token_ids)
        sp.validate()
        return sp
