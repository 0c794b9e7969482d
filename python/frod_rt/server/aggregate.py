"""Summing the ``/metrics`` and ``/health`` answers of several engine replicas into one.

Each replica serves the single-process app (``create_app``), so its ``/metrics`` is the
Prometheus text of ``metrics.render``. The aggregate keeps every ``# HELP`` / ``# TYPE``
line once and sums the samples that have the same name and labels over the replicas
(counters add up; so do the gauges exported, which count requests, tokens per second,
queue depths and adapters). It adds ``frod_rt_replicas`` (replicas reporting) and
``frod_rt_replica_up{replica}``.
"""
from __future__ import annotations


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 2 ** 53 else repr(float(v))


def parse_samples(text: str) -> tuple[list[str], dict[str, float]]:
    """(comment lines in order, {"name{labels}": value}) of a Prometheus text page.
    Lines that are not ``name[{labels}] value`` are ignored."""
    comments, samples = [], {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line)
            continue
        key, _, val = line.rpartition(" ")
        try:
            samples[key] = float(val)
        except ValueError:
            continue
    return comments, samples


def merge_metrics(pages: dict[str, str]) -> str:
    """One Prometheus page from ``{replica id: its /metrics text}``: samples of equal name
    and labels summed, plus the replica gauges."""
    order: list[str] = []                 # metric family names, first seen first
    comments: dict[str, list[str]] = {}
    samples: dict[str, dict[str, float]] = {}
    for text in pages.values():
        cmts, smp = parse_samples(text)
        for c in cmts:
            parts = c.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                fam = parts[2]
                if fam not in comments:
                    comments[fam] = []
                    order.append(fam)
                if c not in comments[fam]:
                    comments[fam].append(c)
        for key, v in smp.items():
            fam = key.split("{", 1)[0]
            if fam not in samples and fam not in comments:
                order.append(fam)
                comments[fam] = []
            fam_s = samples.setdefault(fam, {})
            fam_s[key] = fam_s.get(key, 0.0) + v
    out = ["# HELP frod_rt_replicas Engine replicas reporting.",
           "# TYPE frod_rt_replicas gauge", f"frod_rt_replicas {len(pages)}",
           "# HELP frod_rt_replica_up 1 for every engine replica reporting.",
           "# TYPE frod_rt_replica_up gauge"]
    out += [f'frod_rt_replica_up{{replica="{r}"}} 1' for r in sorted(pages)]
    for fam in order:
        out += comments.get(fam, [])
        out += [f"{k} {_fmt(v)}" for k, v in samples.get(fam, {}).items()]
    return "\n".join(out) + "\n"


def merge_health(base_name: str, reports: dict[str, dict], expected: int) -> tuple[int, dict]:
    """(status code, body) of the aggregated ``/health``: 200 while at least one replica
    answers ok; ``replicas`` lists each one's own body; ``degraded`` is true while fewer
    than ``expected`` replicas are ok."""
    ok = {r: b for r, b in reports.items() if b.get("status") == "ok"}
    body = {"status": "ok" if ok else "no engine replica is serving", "model": base_name,
            "replicas_expected": expected, "replicas_ok": len(ok),
            "degraded": len(ok) < expected,
            "in_flight": sum(int(b.get("in_flight", 0)) for b in reports.values()),
            "replicas": {r: reports[r] for r in sorted(reports)}}
    return (200 if ok else 503), body
