"""The client's integration tests run against a real `starling serve` on both engines, the
same fixture the interop tests use."""

from tests.interop.conftest import starling_server

__all__ = ["starling_server"]
