"""JSON results: one document per suite run, with a small schema check used by the tests.

Document layout (``schema = "frod_rt.bench/1"``)::

    {"schema", "suite", "device", "quick", "created" (UTC ISO-8601),
     "machine": {...machine_info...}, "settings": {...},
     "measurements": [
        {"sweep": str, "contender": str, "params": {...}, "metric": str, "unit": str,
         "repeats": [float], "median", "q1", "q3", "iqr", "min", "max", ...extra numbers}
      | {"sweep", "contender", "params", "skipped": "why"}],
     "headline": {...}, "plots": [file names next to the JSON], "notes": [str]}
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

SCHEMA = "frod_rt.bench/1"
_STATS = ("median", "q1", "q3", "iqr", "min", "max")


class Results:
    """Collects measurements of one suite run and writes them as JSON."""

    def __init__(self, suite: str, device: str, quick: bool, machine: dict, settings: dict):
        self.created = _dt.datetime.now(_dt.timezone.utc)
        self.doc = {"schema": SCHEMA, "suite": suite, "device": device, "quick": bool(quick),
                    "created": self.created.isoformat(timespec="seconds"),
                    "machine": machine, "settings": settings, "measurements": [],
                    "headline": {}, "plots": [], "notes": []}

    @property
    def measurements(self) -> list[dict]:
        return self.doc["measurements"]

    def add(self, sweep: str, contender: str, params: dict, stats: dict, *, metric: str,
            unit: str, **extra) -> dict:
        """Record one measurement: ``stats`` is :func:`bench.timing.summarize` output."""
        m = {"sweep": sweep, "contender": contender, "params": dict(params), "metric": metric,
             "unit": unit}
        m.update({k: stats[k] for k in ("repeats",) + _STATS})
        m.update(extra)
        self.measurements.append(m)
        return m

    def skip(self, sweep: str, contender: str, params: dict, why: str) -> dict:
        """Record a measurement that was not taken, and why (never a made-up number)."""
        m = {"sweep": sweep, "contender": contender, "params": dict(params), "skipped": why}
        self.measurements.append(m)
        return m

    def find(self, sweep: str, contender: str, **params) -> dict | None:
        """The measured (not skipped) entry matching ``sweep``, ``contender`` and ``params``."""
        for m in self.measurements:
            if (m["sweep"] == sweep and m["contender"] == contender and "skipped" not in m
                    and all(m["params"].get(k) == v for k, v in params.items())):
                return m
        return None

    @classmethod
    def from_doc(cls, doc: dict) -> "Results":
        """A Results holding a document read back with :func:`load` (same stem)."""
        res = cls.__new__(cls)
        res.doc = doc
        res.created = _dt.datetime.fromisoformat(doc["created"])
        return res

    def stem(self) -> str:
        return f"{self.doc['suite']}-{self.doc['device']}-{self.created.strftime('%Y%m%d-%H%M%S')}"

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{self.stem()}.json"
        validate(self.doc)
        path.write_text(json.dumps(self.doc, indent=1, sort_keys=False) + "\n")
        return path


def validate(doc: dict) -> None:
    """Raise ValueError naming the first problem if ``doc`` does not follow the schema."""
    for key, typ in (("schema", str), ("suite", str), ("device", str), ("quick", bool),
                     ("created", str), ("machine", dict), ("settings", dict),
                     ("measurements", list), ("headline", dict), ("plots", list),
                     ("notes", list)):
        if not isinstance(doc.get(key), typ):
            raise ValueError(f"results: field {key!r} missing or not a {typ.__name__}")
    if doc["schema"] != SCHEMA:
        raise ValueError(f"results: schema {doc['schema']!r}, expected {SCHEMA!r}")
    for key in ("cpu_model", "cpu_cores", "torch", "frod_rt", "git_commit"):
        if key not in doc["machine"]:
            raise ValueError(f"results: machine.{key} missing")
    for i, m in enumerate(doc["measurements"]):
        for key in ("sweep", "contender", "params"):
            if key not in m:
                raise ValueError(f"results: measurements[{i}].{key} missing")
        if "skipped" in m:
            continue
        reps = m.get("repeats")
        if not isinstance(reps, list) or not reps:
            raise ValueError(f"results: measurements[{i}].repeats empty")
        for key in _STATS + ("metric", "unit"):
            if key not in m:
                raise ValueError(f"results: measurements[{i}].{key} missing")
        if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in reps):
            raise ValueError(f"results: measurements[{i}].repeats not finite numbers")
        if not m["q1"] <= m["median"] <= m["q3"]:
            raise ValueError(f"results: measurements[{i}] quartiles out of order")


def load(path: str | Path) -> dict:
    doc = json.loads(Path(path).read_text())
    validate(doc)
    return doc
