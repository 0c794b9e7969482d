"""``GET /metrics``: Prometheus text exposition (format 0.0.4) of engine and server counters.

Every metric is prefixed ``frod_rt_``. Counters end in ``_total``. Besides the named ones
below, every other numeric entry of ``Engine.stats()`` is exported as ``frod_rt_engine_<key>``
(a gauge, or a counter when the key ends in ``_total``).
"""
from __future__ import annotations

# (metric name, engine stats key or callable, type, help)
_NAMED = [
    ("requests_total", "requests_total", "counter", "Requests accepted by the engine."),
    ("requests_finished_total", "requests_finished_total", "counter",
     "Requests finished (any reason)."),
    ("requests_aborted_total", "requests_aborted_total", "counter",
     "Requests aborted (client disconnect, adapter removed, shutdown)."),
    ("prompt_tokens_total", "prompt_tokens_total", "counter", "Prompt tokens accepted."),
    ("generation_tokens_total", "tokens_generated_total", "counter", "Tokens generated."),
    ("queue_depth", "queue_depth", "gauge", "Requests waiting for admission."),
    ("running_requests", "running", "gauge", "Requests in the running batch."),
    ("adapters_loaded", "adapters_loaded", "gauge", "Adapters registered."),
    ("adapters_on_device", "adapters_on_device", "gauge", "Adapters resident in device slots."),
    ("adapter_evictions_total", "adapter_evictions_total", "counter",
     "Adapters evicted from device slots."),
    ("adapter_host_evictions_total", "adapter_host_evictions_total", "counter",
     "Adapters evicted from the host pool."),
]


def _fmt(v) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def render(engine_stats: dict, server: dict) -> str:
    """The exposition text. ``server``: {"tokens_per_second": float,
    "rejected": {reason: count}, "http_errors": {status: count}, "in_flight": int,
    "step_errors_total": int, "adapter_loads_total": int, "adapter_unloads_total": int}."""
    out: list[str] = []

    def metric(name, typ, help_, samples):
        out.append(f"# HELP frod_rt_{name} {help_}")
        out.append(f"# TYPE frod_rt_{name} {typ}")
        for labels, v in samples:
            lab = ("{" + ",".join(f'{k}="{val}"' for k, val in labels.items()) + "}") \
                if labels else ""
            out.append(f"frod_rt_{name}{lab} {_fmt(v)}")

    used = set()
    for name, key, typ, help_ in _NAMED:
        if key in engine_stats:
            used.add(key)
            metric(name, typ, help_, [({}, engine_stats[key])])
    metric("generation_tokens_per_second", "gauge",
           "Generated tokens per second over the last 10 s.",
           [({}, server.get("tokens_per_second", 0.0))])
    metric("requests_in_flight", "gauge", "Requests the server is answering.",
           [({}, server.get("in_flight", 0))])
    metric("requests_rejected_total", "counter", "Requests refused before generation, by reason.",
           [({"reason": r}, n) for r, n in sorted(server.get("rejected", {}).items())]
           or [({"reason": "overload"}, 0)])
    metric("http_errors_total", "counter", "Error responses by HTTP status.",
           [({"status": str(s)}, n) for s, n in sorted(server.get("http_errors", {}).items())]
           or [({"status": "500"}, 0)])
    metric("engine_step_errors_total", "counter", "engine.step() failures.",
           [({}, server.get("step_errors_total", 0))])
    metric("adapter_loads_total", "counter", "Adapters loaded through the API.",
           [({}, server.get("adapter_loads_total", 0))])
    metric("adapter_unloads_total", "counter", "Adapters unloaded through the API.",
           [({}, server.get("adapter_unloads_total", 0))])
    for key in sorted(engine_stats):
        v = engine_stats[key]
        if key in used or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        typ = "counter" if key.endswith("_total") else "gauge"
        metric(f"engine_{key}", typ, f"Engine.stats()['{key}'].", [({}, v)])
    return "\n".join(out) + "\n"
