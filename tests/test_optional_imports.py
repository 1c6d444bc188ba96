"""A single-process server on SQLite does not import the libraries of subsystems that are
off by default (benchmarks/README, issue 20: they cost ~20 MiB of idle memory): Redis
(workers), asyncpg (PostgreSQL), joserfc/cryptography (OIDC), aiocoap and noise (the
low-bandwidth CoAP listener), Pillow (thumbnails), ldap3 (the LDAP module). Nor does it
import, at start, what only a feature that is off or a rare request needs (issue 20,
second pass: ~3.5 MiB together): prometheus_client (`enable_metrics`), cbor2 (CBOR
requests), xml (CAS), smtplib (email), html.parser (URL previews), decimal (canonical
JSON numbers with an exponent), logging.config and getpass (other CLI commands)."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("redis", "asyncpg", "joserfc", "cryptography", "aiocoap", "noise", "PIL", "ldap3")
ON_FIRST_USE = (
    "prometheus_client",
    "cbor2",
    "xml.etree.ElementTree",
    "smtplib",
    "html.parser",
    "decimal",
    "logging.config",
    "getpass",
    "starling.protocol.lowbandwidth.codec",
    "starling.media.opengraph",
)


def test_serving_imports_no_optional_library() -> None:
    # A fresh interpreter: the test session itself has imported all of them.
    code = (
        "import sys, starling.cli, starling.app\n"
        f"print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({OPTIONAL!r}))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""


def test_serving_imports_no_module_only_a_feature_off_or_a_rare_request_needs() -> None:
    code = (
        "import sys, starling.cli, starling.app\n"
        f"print(' '.join(sorted(set(sys.modules) & set({ON_FIRST_USE!r}))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == ""


def test_metrics_count_only_once_enabled() -> None:
    # A fresh interpreter: metrics declared before and after `enable`, updates dropped
    # before it (prometheus_client not even imported), counted after.
    code = """
import sys
from starling import metrics
from starling.api.http import REQUESTS
REQUESTS.labels("/x", "GET", "200").inc()
assert "prometheus_client" not in sys.modules and REQUESTS.real is None
metrics.enable()
late = metrics.Counter("starling_test_late_total", "declared after enable")
REQUESTS.labels("/x", "GET", "200").inc()
late.inc(2)
from prometheus_client import REGISTRY
labels = {"route": "/x", "method": "GET", "code": "200"}
print(REGISTRY.get_sample_value("starling_http_requests_total", labels),
      REGISTRY.get_sample_value("starling_test_late_total"))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split() == ["1.0", "2.0"]


def test_the_lazy_imports_still_resolve() -> None:
    # What the server imports on first use when these subsystems are configured.
    from starling.accounts.oidc import _Provider
    from starling.cluster.bus import BusUnavailable, ClusterBus, channel_for
    from starling.cluster.wiring import ClusterParts, ClusterRoles, join_cluster
    from starling.lowbandwidth.server import LowBandwidthServer, load_or_create_key
    from starling.media.opengraph import parse_opengraph
    from starling.protocol.lowbandwidth.coap import FEATURE
    from starling.protocol.lowbandwidth.codec import CodecError

    assert ClusterRoles is not None and ClusterParts is not None
    assert callable(join_cluster) and callable(channel_for) and callable(load_or_create_key)
    assert issubclass(BusUnavailable, Exception)
    assert ClusterBus is not None and LowBandwidthServer is not None and FEATURE
    assert hasattr(_Provider, "verify_id_token")
    assert callable(parse_opengraph) and issubclass(CodecError, Exception)
