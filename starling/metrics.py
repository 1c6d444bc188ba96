"""Prometheus metrics that cost nothing until something can read them.

`prometheus_client` (with the http.server, wsgiref and decimal modules it pulls in) adds
~2 MiB to a process's idle memory (issue 20), and metrics are off unless the config says
`enable_metrics`. So modules declare their metrics here: `Counter`, `Gauge` and
`Histogram` take prometheus_client's arguments and return a `Metric` whose updates are
dropped until `enable()` (called when a /metrics endpoint is registered) makes the real
prometheus_client objects, for the metrics declared so far and every one after.
"""

from __future__ import annotations

from typing import Any


class _Dropped:
    """What a metric is before metrics are enabled: every update does nothing."""

    def labels(self, *labelvalues: str, **labelkwargs: str) -> _Dropped:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def dec(self, amount: float = 1) -> None:
        pass

    def set(self, value: float) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass


_DROPPED = _Dropped()
_declared: list[Metric] = []
_enabled = False


class Metric:
    """A prometheus_client Counter, Gauge or Histogram, made by `enable()`."""

    __slots__ = ("_args", "_kind", "_kwargs", "real")

    def __init__(self, kind: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._kind = kind
        self._args = args
        self._kwargs = kwargs
        self.real: Any = None
        """The prometheus_client object, once metrics are enabled."""
        if _enabled:
            self._make()
        _declared.append(self)

    def _make(self) -> None:
        import prometheus_client

        self.real = getattr(prometheus_client, self._kind)(*self._args, **self._kwargs)

    def _target(self) -> Any:
        return _DROPPED if self.real is None else self.real

    def labels(self, *labelvalues: str, **labelkwargs: str) -> Any:
        return self._target().labels(*labelvalues, **labelkwargs)

    def inc(self, amount: float = 1) -> None:
        self._target().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._target().dec(amount)

    def set(self, value: float) -> None:
        self._target().set(value)

    def observe(self, amount: float) -> None:
        self._target().observe(amount)


def Counter(*args: Any, **kwargs: Any) -> Metric:
    return Metric("Counter", args, kwargs)


def Gauge(*args: Any, **kwargs: Any) -> Metric:
    return Metric("Gauge", args, kwargs)


def Histogram(*args: Any, **kwargs: Any) -> Metric:
    return Metric("Histogram", args, kwargs)


def enable() -> None:
    """From now on metrics count (idempotent): the ones declared so far are made now."""
    global _enabled
    if _enabled:
        return
    _enabled = True
    for metric in _declared:
        if metric.real is None:
            metric._make()


def enabled() -> bool:
    return _enabled


def exposition() -> tuple[bytes, str]:
    """The current values in Prometheus's text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(), CONTENT_TYPE_LATEST
