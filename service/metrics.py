"""Prometheus metrics (prometheus-client). Labels are bounded: endpoint, steps, status, model."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUEST_LATENCY = Histogram(
    "fewstep_request_duration_seconds", "End-to-end HTTP request latency", ["endpoint", "steps"], buckets=LATENCY_BUCKETS
)
REQUESTS = Counter("fewstep_requests_total", "HTTP requests by endpoint and status", ["endpoint", "status"])
ERRORS = Counter("fewstep_errors_total", "HTTP error responses (4xx and 5xx) by status", ["status"])
QUEUE_WAIT = Histogram("fewstep_queue_wait_seconds", "Time a request waited before its batch started running", buckets=LATENCY_BUCKETS)
BATCH_SIZE = Histogram("fewstep_batch_size", "Requests per forward-pass batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))
BATCH_IMAGES = Histogram("fewstep_batch_images", "Images per forward-pass batch", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
MODEL_TIME = Histogram("fewstep_batch_model_seconds", "Model time per batch", ["steps"], buckets=LATENCY_BUCKETS)
IMAGES = Counter("fewstep_images_generated_total", "Images generated", ["model"])
QUEUE_DEPTH = Gauge("fewstep_queue_depth", "Requests queued or running")
LIVE_WORKERS = Gauge("fewstep_live_workers", "Workers with a recent heartbeat")
JOBS_EXECUTED = Counter("fewstep_jobs_executed_total", "Requests a worker ran through a model (a request taken over after a crash counts again)")
DEAD_LETTERS = Counter("fewstep_dead_letters_total", "Requests failed for being delivered too often (copied to the dead-letter stream)")
