"""A single-process server on SQLite does not import the libraries of subsystems that are
off by default (benchmarks/README, issue 20: they cost ~20 MiB of idle memory): Redis
(workers), asyncpg (PostgreSQL), joserfc/cryptography (OIDC), aiocoap and noise (the
low-bandwidth CoAP listener), Pillow (thumbnails), ldap3 (the LDAP module)."""

from __future__ import annotations

import subprocess
import sys

OPTIONAL = ("redis", "asyncpg", "joserfc", "cryptography", "aiocoap", "noise", "PIL", "ldap3")


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


def test_the_lazy_imports_still_resolve() -> None:
    # What the server imports on first use when these subsystems are configured.
    from starling.accounts.oidc import _Provider
    from starling.cluster.bus import BusUnavailable, ClusterBus, channel_for
    from starling.cluster.wiring import ClusterParts, ClusterRoles, join_cluster
    from starling.lowbandwidth.server import LowBandwidthServer, load_or_create_key
    from starling.protocol.lowbandwidth.coap import FEATURE

    assert ClusterRoles is not None and ClusterParts is not None
    assert callable(join_cluster) and callable(channel_for) and callable(load_or_create_key)
    assert issubclass(BusUnavailable, Exception)
    assert ClusterBus is not None and LowBandwidthServer is not None and FEATURE
    assert hasattr(_Provider, "verify_id_token")
