"""Federation metrics (Prometheus, served on /metrics with `enable_metrics`): the
outbound queues per destination, failed transactions (each one a retry to come) and
their latency, and inbound PDUs by outcome."""

from __future__ import annotations

from starling.metrics import Counter, Gauge, Histogram

DESTINATION_QUEUE = Gauge(
    "starling_federation_destination_queue",
    "PDUs and EDUs held in memory for a destination (what it is owed from the database"
    " while catching up is not counted)",
    ["destination"],
)
TRANSACTION_FAILURES = Counter(
    "starling_federation_transaction_failures_total",
    "Outbound transactions that failed and will be retried after a backoff",
    ["destination"],
)
TRANSACTION_SECONDS = Histogram(
    "starling_federation_transaction_seconds",
    "Time to send one outbound transaction and get its answer",
)
INBOUND_PDUS = Counter(
    "starling_federation_inbound_pdus_total",
    "PDUs received from other servers, by outcome (accepted, rejected, soft_failed, or"
    " dropped before being stored)",
    ["outcome"],
)
