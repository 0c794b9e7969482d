"""``GET /metrics``: Prometheus metrics on ``prometheus_client``, one registry per app.

Every name is prefixed ``frod_rt_``. Three kinds of series:

* **Scraped from the engine** (a custom collector reads ``Engine.stats()`` and the engine
  loop at each scrape): the named counters and gauges of ``_NAMED`` plus every other numeric
  stats entry as ``frod_rt_engine_<key>``.
* **Server counters** incremented by the routes: rejected requests, HTTP errors, adapter
  loads / unloads.
* **Per request**, recorded by the engine loop as outputs arrive: per-adapter counters
  (``adapter`` label: the adapter name, or the base model's name for base requests) and four
  latency histograms with vLLM's buckets (no labels).

Label cardinality is bounded (:class:`AdapterLabels`): at most ``max_adapter_labels`` adapter
names have their own series; the series of an adapter that is no longer loaded are removed
(at each scrape, and before a new name would overflow the cap); requests of adapters beyond
the cap are counted under ``adapter="(other)"``; requests for blends of adapters under
``adapter="(blend)"``.
"""
from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

OTHER = "(other)"          # the adapter label of requests beyond the label cap
BLEND = "(blend)"          # the adapter label of requests for a blend of adapters

# vLLM's buckets (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)

# (metric name, Engine.stats() key, type, help)
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


class AdapterLabels:
    """The bounded set of adapter names that get their own ``adapter`` label value.

    ``assign(name)`` (at request submission) returns ``name`` while fewer than ``cap`` names
    are tracked, else :data:`OTHER` (after first dropping names no longer loaded, through
    ``is_loaded``). ``live(label)`` maps a label handed out earlier to the one to count under
    now (:data:`OTHER` once its name was dropped, so a removed adapter's series is not revived
    by its last running requests). ``sweep()`` drops every name no longer loaded and returns
    them. The base model's name is never dropped. Thread-safe.
    """

    def __init__(self, cap: int, is_loaded, base_name):
        if cap < 1:
            raise ValueError(f"max_adapter_labels: expected >= 1, got {cap}")
        self.cap = cap
        self._is_loaded = is_loaded          # () -> set of loaded adapter names
        self._base_name = base_name          # () -> the base model's name
        self._tracked: set[str] = set()
        self._lock = threading.Lock()

    def tracked(self) -> set[str]:
        with self._lock:
            return set(self._tracked)

    def assign(self, name: str) -> tuple[str, list[str]]:
        """(label for ``name``, names dropped to make room)."""
        with self._lock:
            if name in self._tracked:
                return name, []
            dropped = []
            if len(self._tracked) >= self.cap:
                dropped = self._sweep_locked()
            if len(self._tracked) < self.cap:
                self._tracked.add(name)
                return name, dropped
            return OTHER, dropped

    def live(self, label: str) -> str:
        with self._lock:
            return label if label in self._tracked else OTHER

    def sweep(self) -> list[str]:
        with self._lock:
            return self._sweep_locked()

    def _sweep_locked(self) -> list[str]:
        keep = set(self._is_loaded()) | {self._base_name(), BLEND}
        gone = sorted(self._tracked - keep)
        self._tracked -= set(gone)
        return gone


class _ScrapeCollector:
    """Engine stats and engine-loop gauges, read at each scrape."""

    def __init__(self, engine, loop):
        self.engine, self.loop = engine, loop

    def collect(self):
        stats = self.engine.stats()
        used = set()
        for name, key, typ, help_ in _NAMED:
            if key in stats:
                used.add(key)
                yield _family(name, typ, help_, stats[key])
        yield _family("generation_tokens_per_second", "gauge",
                      "Generated tokens per second over the last 10 s.",
                      self.loop.tokens_per_second())
        yield _family("requests_in_flight", "gauge", "Requests the server is answering.",
                      self.loop.in_flight())
        yield _family("engine_step_errors_total", "counter", "engine.step() failures.",
                      self.loop.step_errors_total)
        for key in sorted(stats):
            v = stats[key]
            if key in used or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            typ = "counter" if key.endswith("_total") else "gauge"
            yield _family(f"engine_{key}", typ, f"Engine.stats()['{key}'].", v)


def _family(name: str, typ: str, help_: str, value):
    cls = CounterMetricFamily if typ == "counter" else GaugeMetricFamily
    return cls(f"frod_rt_{name}", help_, value=float(value))


class ApiCounters:
    """The counters of the API routes themselves, defined once: the single-process server's
    registry and the Ray router's own (``ray_app.router_metrics``) use this class, so their
    samples carry the same names, help and labels and ``aggregate.merge_metrics`` adds them
    up. ``http_errors{status}``: error responses; ``adapter_loads`` / ``adapter_unloads``:
    adapters loaded / unloaded through the API."""

    def __init__(self, registry: CollectorRegistry):
        p = "frod_rt_"
        self.http_errors = Counter(p + "http_errors", "Error responses by HTTP status.",
                                   ["status"], registry=registry)
        self.adapter_loads = Counter(p + "adapter_loads", "Adapters loaded through the API.",
                                     registry=registry)
        self.adapter_unloads = Counter(p + "adapter_unloads",
                                       "Adapters unloaded through the API.", registry=registry)


class ServerMetrics:
    """The app's metrics registry and the hooks the routes and the engine loop call.

    Args:
        engine: the served ``frod_rt.Engine`` (stats, adapter names, base name).
        loop: its ``EngineLoop`` (tokens/s, in-flight, step errors).
        max_adapter_labels: adapter names with their own label value at most (see
            :class:`AdapterLabels`).
    """

    def __init__(self, engine, loop, max_adapter_labels: int = 256):
        self.engine = engine
        self.registry = CollectorRegistry(auto_describe=True)
        self.labels = AdapterLabels(max_adapter_labels, lambda: engine.adapters(),
                                    lambda: engine.base_name)
        r = self.registry
        r.register(_ScrapeCollector(engine, loop))
        p = "frod_rt_"
        self.rejected = Counter(p + "requests_rejected", "Requests refused before generation, "
                                "by reason.", ["reason"], registry=r)
        self.rejected.labels(reason="overload")
        api = ApiCounters(r)
        self.http_errors, self.adapter_loads = api.http_errors, api.adapter_loads
        self.adapter_unloads = api.adapter_unloads
        lab = ["adapter"]
        self.a_requests = Counter(p + "adapter_requests", "Requests submitted, per adapter "
                                  "(the base model's name for base requests).", lab, registry=r)
        self.a_prompt = Counter(p + "adapter_prompt_tokens", "Prompt tokens, per adapter.",
                                lab, registry=r)
        self.a_generation = Counter(p + "adapter_generation_tokens",
                                    "Generated tokens, per adapter.", lab, registry=r)
        self.a_errors = Counter(p + "adapter_request_errors", "Requests answered with an error "
                                "(or ended by one while streaming), per adapter.", lab,
                                registry=r)
        self._per_adapter = (self.a_requests, self.a_prompt, self.a_generation, self.a_errors)
        self.ttft = Histogram(p + "time_to_first_token_seconds", "Time from submission to the "
                              "first generated token.", buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram(p + "inter_token_latency_seconds", "Time between successive "
                             "outputs of one request (one token per decode step).",
                             buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram(p + "e2e_request_latency_seconds", "Time from submission to the "
                             "last output of requests that finished (not aborted).",
                             buckets=REQUEST_LATENCY_BUCKETS, registry=r)
        self.queue = Histogram(p + "request_queue_time_seconds", "Time a finished request "
                               "waited before its first scheduled step.",
                               buckets=REQUEST_LATENCY_BUCKETS, registry=r)

    # ---- per-adapter label sets ----------------------------------------------------------
    def _drop(self, names) -> None:
        for name in names:
            for m in self._per_adapter:
                try:
                    m.remove(name)
                except KeyError:
                    pass

    def sweep(self) -> None:
        """Remove the series of adapters that are no longer loaded."""
        self._drop(self.labels.sweep())

    def label_for(self, model: str) -> str:
        """The ``adapter`` label value for requests of ``model`` (assigned now)."""
        label, dropped = self.labels.assign(model)
        self._drop(dropped)
        return label

    # ---- hooks -----------------------------------------------------------------------------
    def request_submitted(self, label: str, prompt_tokens: int) -> None:
        label = self.labels.live(label)
        self.a_requests.labels(label).inc()
        self.a_prompt.labels(label).inc(prompt_tokens)

    def tokens(self, label: str, n: int, ttft: float | None, itl: float | None) -> None:
        """``n`` tokens arrived for a request; ``ttft`` on its first, else ``itl``."""
        if n:
            self.a_generation.labels(self.labels.live(label)).inc(n)
        if ttft is not None:
            self.ttft.observe(ttft)
        if itl is not None:
            self.itl.observe(itl)

    def finished(self, e2e: float, queue_s: float | None) -> None:
        self.e2e.observe(e2e)
        if queue_s is not None:
            self.queue.observe(queue_s)

    def request_error(self, label: str) -> None:
        self.a_errors.labels(self.labels.live(label)).inc()

    # ---- exposition --------------------------------------------------------------------------
    def render(self) -> bytes:
        """The exposition text (Prometheus text format 0.0.4)."""
        self.sweep()
        return generate_latest(self.registry)
