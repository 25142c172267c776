"""Prometheus metrics of ``pomona serve``, served on ``GET /metrics``.

One process (:class:`Metrics`): requests are counted in plain dictionaries and turned
into metric families on a scrape. Several worker processes (:class:`SharedMetrics`,
chosen when ``PROMETHEUS_MULTIPROC_DIR`` is set, as ``pomona serve --workers N`` does):
prometheus_client's multiprocess mode, each worker writing its counts to files in that
folder and every scrape, whichever worker answers it, summing all of them.

Both add prometheus_client's process metrics (``process_cpu_seconds_total``,
``process_resident_memory_bytes``, open descriptors...). In multiprocess mode those
describe the worker that answered the scrape; the ``pomona_*`` families are the sums
over all workers (``pomona_requests_in_flight`` over the workers alive).
"""

from __future__ import annotations

import bisect
import itertools
import os
from collections.abc import Iterator

import prometheus_client
from prometheus_client import multiprocess
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

__all__ = ["LATENCY_BUCKETS", "Metrics", "SharedMetrics", "metrics_for_process"]

#: Latency buckets from 50 µs (a one-row request) to 10 s (a 64 MiB JSON body).
LATENCY_BUCKETS = (
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


_MODEL_CALLS_HELP = "onnxruntime calls; fewer than infer requests when micro-batching merges them."


class Metrics:
    """Requests, latency, rows and requests in flight, registered in ``registry``.

    Requests are counted in plain dictionaries (every request runs on the event loop
    thread) and turned into metric families only when ``/metrics`` is scraped: a
    labelled ``prometheus_client.Counter`` costs more per request than a small model.
    """

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.registry = registry or prometheus_client.CollectorRegistry()
        self.rows = 0
        self.model_calls = 0
        self.in_flight = 0
        self._requests: dict[tuple[str, int], int] = {}
        self._latency: dict[str, tuple[list[int], list[float]]] = {}
        self.registry.register(self)
        prometheus_client.ProcessCollector(registry=self.registry)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request of ``endpoint`` and the time it took."""
        key = (endpoint, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get(endpoint)
        if latency is None:
            latency = self._latency[endpoint] = ([0] * (len(LATENCY_BUCKETS) + 1), [0.0])
        latency[0][bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        latency[1][0] += seconds

    def exposition(self) -> tuple[bytes, bytes]:
        """The content type and body of a scrape."""
        body = prometheus_client.generate_latest(self.registry)
        return prometheus_client.CONTENT_TYPE_LATEST.encode(), body

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "pomona_requests",
            "HTTP requests answered, by endpoint and status code.",
            labels=["endpoint", "code"],
        )
        for (endpoint, status), count in sorted(self._requests.items()):
            requests.add_metric([endpoint, str(status)], count)
        yield requests
        latency = HistogramMetricFamily(
            "pomona_request_duration_seconds",
            "Time from the request reaching the application to its response being sent.",
            labels=["endpoint"],
        )
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        for endpoint, (counts, total) in sorted(self._latency.items()):
            cumulative = list(itertools.accumulate(counts))
            latency.add_metric([endpoint], list(zip(bounds, cumulative, strict=True)), total[0])
        yield latency
        yield CounterMetricFamily("pomona_rows_predicted", "Rows the model predicted.", self.rows)
        yield CounterMetricFamily("pomona_model_calls", _MODEL_CALLS_HELP, self.model_calls)
        yield GaugeMetricFamily(
            "pomona_requests_in_flight", "HTTP requests being answered now.", self.in_flight
        )


class SharedMetrics:
    """The same metrics in prometheus_client's multiprocess mode: summed over workers.

    Each update goes to a memory-mapped file of this worker (a few microseconds more per
    request than :class:`Metrics`); a scrape reads the files of every worker.
    """

    def __init__(self) -> None:
        self.registry = prometheus_client.CollectorRegistry()
        multiprocess.MultiProcessCollector(self.registry)
        prometheus_client.ProcessCollector(registry=self.registry)
        self._requests = prometheus_client.Counter(
            "pomona_requests",
            "HTTP requests answered, by endpoint and status code.",
            ["endpoint", "code"],
            registry=None,
        )
        self._latency = prometheus_client.Histogram(
            "pomona_request_duration_seconds",
            "Time from the request reaching the application to its response being sent.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self._rows = prometheus_client.Counter(
            "pomona_rows_predicted", "Rows the model predicted.", registry=None
        )
        self._in_flight = prometheus_client.Gauge(
            "pomona_requests_in_flight",
            "HTTP requests being answered now.",
            multiprocess_mode="livesum",
            registry=None,
        )
        self._calls = prometheus_client.Counter(
            "pomona_model_calls", _MODEL_CALLS_HELP, registry=None
        )
        self._rows_seen = 0
        self._calls_seen = 0
        self._in_flight_now = 0

    @property
    def rows(self) -> int:
        return self._rows_seen

    @rows.setter
    def rows(self, value: int) -> None:
        self._rows.inc(value - self._rows_seen)
        self._rows_seen = value

    @property
    def model_calls(self) -> int:
        return self._calls_seen

    @model_calls.setter
    def model_calls(self, value: int) -> None:
        self._calls.inc(value - self._calls_seen)
        self._calls_seen = value

    @property
    def in_flight(self) -> int:
        return self._in_flight_now

    @in_flight.setter
    def in_flight(self, value: int) -> None:
        self._in_flight.set(value)
        self._in_flight_now = value

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one answered request of ``endpoint`` and the time it took."""
        self._requests.labels(endpoint, str(status)).inc()
        self._latency.labels(endpoint).observe(seconds)

    def exposition(self) -> tuple[bytes, bytes]:
        """The content type and body of a scrape: every worker's counts, summed."""
        body = prometheus_client.generate_latest(self.registry)
        return prometheus_client.CONTENT_TYPE_LATEST.encode(), body


def metrics_for_process(
    registry: prometheus_client.CollectorRegistry | None = None,
) -> Metrics | SharedMetrics:
    """:class:`SharedMetrics` under ``PROMETHEUS_MULTIPROC_DIR``, else :class:`Metrics`."""
    if registry is None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return SharedMetrics()
    return Metrics(registry)
