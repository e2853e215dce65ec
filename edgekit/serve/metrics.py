"""Prometheus metrics (text format at GET /metrics), one registry per server.

Names follow Prometheus style: base units, `_total` for counters, `_seconds` for time. Queue time
(waiting for a model worker) and compute time (the onnxruntime run) are histograms apart, as in
Triton. Process RSS and CPU come from prometheus_client's process collector; device temperature
and Raspberry Pi throttling flags (edgekit.benchmark.device) are read at scrape time.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily

from edgekit.benchmark import device

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
COSINE_BUCKETS = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 0.9999, 1.0)
# disconnected: the client went away before its request was read (not a bad request)
OUTCOMES = ("success", "bad_request", "error", "unauthorized", "disconnected")


class DeviceCollector:
    """Device conditions, refreshed at every scrape."""

    def collect(self):
        temp = device.temperature_c()
        if temp is not None:
            g = GaugeMetricFamily(
                "edgekit_device_temperature_celsius", "hottest thermal zone of the device"
            )
            g.add_metric([], temp)
            yield g
        flags = device.throttled()
        if flags is not None:
            g = GaugeMetricFamily(
                "edgekit_device_throttled",
                "Raspberry Pi throttling flags from vcgencmd get_throttled (1: set)",
                labels=["flag"],
            )
            for name, value in flags.items():
                if name != "raw":
                    g.add_metric([name], float(value))
            yield g


class Metrics:
    def __init__(self):
        disable_created_metrics()  # the *_created series only double the scrape
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total …
        r.register(DeviceCollector())
        self.model_info = Gauge(
            "edgekit_model_info", "served models (value 1)", ["model", "file", "sha256"], registry=r
        )
        self.requests = Counter(
            "edgekit_requests",
            f"inference requests by model and outcome ({', '.join(OUTCOMES)})",
            ["model", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "edgekit_request_duration_seconds",
            "time in the server per inference request (parse, queue, compute, respond)",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "edgekit_queue_duration_seconds",
            "time a request waited for a model worker",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute_seconds = Histogram(
            "edgekit_compute_duration_seconds",
            "onnxruntime run time for the batch a request was in",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "edgekit_inflight_requests", "inference requests being handled", ["model"], registry=r
        )
        self.batch_rows = Histogram(
            "edgekit_batch_size",
            "rows (axis 0) per onnxruntime run, observed once per request",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.range_available = Gauge(
            "edgekit_input_range_available",
            "1 when the report gives the input's int8 calibration range, 0 when it does not",
            ["model", "input"],
            registry=r,
        )
        self.range_checked = Counter(
            "edgekit_input_range_checked_requests",
            "requests whose input was compared with its calibration range",
            ["model", "input"],
            registry=r,
        )
        self.range_outside = Counter(
            "edgekit_input_outside_calibration_requests",
            "requests with an input value outside its calibration range (int8 clips those)",
            ["model", "input"],
            registry=r,
        )
        self.shadow_samples = Counter(
            "edgekit_shadow_comparisons",
            "requests also run through the shadow (float) variant",
            ["model", "shadow"],
            registry=r,
        )
        self.shadow_dropped = Counter(
            "edgekit_shadow_skipped",
            "sampled requests not compared because the shadow was still busy",
            ["model", "shadow"],
            registry=r,
        )
        self.shadow_nonfinite = Counter(
            "edgekit_shadow_nonfinite_comparisons",
            "compared requests whose served or shadow outputs held NaN or infinity (failed)",
            ["model", "shadow"],
            registry=r,
        )
        self.shadow_cosine = Histogram(
            "edgekit_shadow_cosine",
            "cosine similarity of served vs shadow outputs (lowest row of each request)",
            ["model", "shadow"],
            buckets=COSINE_BUCKETS,
            registry=r,
        )
        self.shadow_rows = Counter(
            "edgekit_shadow_rows", "rows compared with the shadow", ["model", "shadow"], registry=r
        )
        self.shadow_top1 = Counter(
            "edgekit_shadow_top1_agreements",
            "compared rows whose top-1 class equals the shadow's (classifiers)",
            ["model", "shadow"],
            registry=r,
        )
        self.shadow_breach = Gauge(
            "edgekit_shadow_budget_breached",
            "1 when the last comparisons break the drift budget, 0 within it",
            ["model", "shadow", "budget"],
            registry=r,
        )

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(self, name)


class ModelMetrics:
    """One model's request series, bound once: every `labels()` call takes a lock and looks up a
    dict, which on the request path of a small model is measurable."""

    def __init__(self, metrics: Metrics, name: str):
        self.requests = {outcome: metrics.requests.labels(name, outcome) for outcome in OUTCOMES}
        self.request_seconds = metrics.request_seconds.labels(name)
        self.queue_seconds = metrics.queue_seconds.labels(name)
        self.compute_seconds = metrics.compute_seconds.labels(name)
        self.inflight = metrics.inflight.labels(name)
        self.batch_rows = metrics.batch_rows.labels(name)


TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class LMMetrics:
    """A language model's series, in llama.cpp's server and vLLM's terms: tokens in and out, time
    to first token, time between tokens, queue time, KV-cache memory."""

    def __init__(self, metrics: Metrics, name: str, kv_bytes: callable):
        """kv_bytes() -> the KV-cache bytes the running generations hold, read at scrape time."""
        r = metrics.registry
        self.prompt_tokens = Counter(
            "edgekit_lm_prompt_tokens", "prompt tokens prefilled", ["model"], registry=r
        ).labels(name)
        self.generated_tokens = Counter(
            "edgekit_lm_generated_tokens", "tokens generated", ["model"], registry=r
        ).labels(name)
        self.ttft = Histogram(
            "edgekit_lm_time_to_first_token_seconds",
            "from a request's arrival to its first generated token (queue + prefill + one step)",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        ).labels(name)
        self.inter_token = Histogram(
            "edgekit_lm_inter_token_latency_seconds",
            "time between two generated tokens of one request",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        ).labels(name)
        self.queue = Histogram(
            "edgekit_lm_queue_duration_seconds",
            "time a request waited before its generation started",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        ).labels(name)
        kv = Gauge(
            "edgekit_lm_kv_cache_bytes",
            "KV-cache bytes held by the running generations (onnxruntime-genai allocates prompt "
            "+ max_tokens per request up front; computed from the cache's shape, float32)",
            ["model"],
            registry=r,
        )
        kv.labels(name).set_function(kv_bytes)

    def started(self, job, queued_s: float) -> None:
        self.queue.observe(queued_s)
        self.prompt_tokens.inc(job.prompt_tokens)

    def token(self, job, now: float) -> None:
        self.generated_tokens.inc()
        if job.last_token_at is None:
            self.ttft.observe(now - job.submitted_at)
        else:
            self.inter_token.observe(now - job.last_token_at)
