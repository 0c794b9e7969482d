"""Summing the ``/metrics`` and ``/health`` answers of several engine replicas into one.

Each replica serves the single-process app (``create_app``), so its ``/metrics`` is the
Prometheus text of ``metrics.ServerMetrics.render`` (``prometheus_client``). The pages are
parsed with ``prometheus_client``'s parser; the aggregate has each family once (its
``# HELP`` / ``# TYPE`` from the first replica that has it) and sums the samples that have
the same name and labels over the replicas: counters, histogram buckets / ``_sum`` /
``_count`` add up, and so do the gauges exported (requests, tokens per second, queue depths,
adapters). ``_created`` samples (creation timestamps) are dropped: a sum of them means
nothing. It adds ``frod_rt_replicas`` (replicas reporting) and ``frod_rt_replica_up{replica}``.
"""
from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 2 ** 53 else repr(float(v))


def _esc(v: str, quote: bool) -> str:
    v = v.replace("\\", "\\\\").replace("\n", "\\n")
    return v.replace('"', '\\"') if quote else v


def _sample_key(name: str, labels: dict) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{_esc(str(v), True)}"' for k, v in labels.items()) + "}"


def parse_samples(text: str) -> tuple[list[str], dict[str, float]]:
    """(comment lines in order, {"name{labels}": value}) of a Prometheus text page, through
    ``prometheus_client``'s parser (labels in the page's order)."""
    comments, samples = [], {}
    for fam in text_string_to_metric_families(text):
        comments += [f"# HELP {fam.name} {_esc(fam.documentation, False)}",
                     f"# TYPE {fam.name} {fam.type}"]
        for s in fam.samples:
            key = _sample_key(s.name, s.labels)
            samples[key] = samples.get(key, 0.0) + s.value
    return comments, samples


def merge_metrics(pages: dict[str, str], extra: tuple[str, ...] = ()) -> str:
    """One Prometheus page from ``{replica id: its /metrics text}``: samples of equal name
    and labels summed, plus the replica gauges. ``extra`` pages (the router's own counters)
    are summed in too but are not replicas."""
    fams: dict[str, tuple[str, str, dict[str, float]]] = {}   # name -> (type, help, samples)
    for text in (*pages.values(), *extra):
        for fam in text_string_to_metric_families(text):
            _, _, smp = fams.setdefault(fam.name, (fam.type, fam.documentation, {}))
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                key = _sample_key(s.name, s.labels)
                smp[key] = smp.get(key, 0.0) + s.value
    out = ["# HELP frod_rt_replicas Engine replicas reporting.",
           "# TYPE frod_rt_replicas gauge", f"frod_rt_replicas {len(pages)}",
           "# HELP frod_rt_replica_up 1 for every engine replica reporting.",
           "# TYPE frod_rt_replica_up gauge"]
    out += [f'frod_rt_replica_up{{replica="{_esc(r, True)}"}} 1' for r in sorted(pages)]
    for name, (typ, doc, smp) in fams.items():
        out += [f"# HELP {name} {_esc(doc, False)}", f"# TYPE {name} {typ}"]
        out += [f"{k} {_fmt(v)}" for k, v in smp.items()]
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
