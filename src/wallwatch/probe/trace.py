"""The trace: OONI data-format events recorded while a measurement runs.

Every primitive appends to one shared `Trace` through a `Transaction`, which
stamps each entry the way OONI's archival format does (ooni/spec df-001..008):
`t0` and `t` in seconds since the measurement started, a `transaction_id`
grouping the steps of one attempt (resolve -> connect -> handshake -> request),
and `tags` saying which feature and endpoint the attempt belongs to.
"""

from __future__ import annotations

import base64
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

# Six decimals = microseconds, what probe-cli writes; more is noise.
_TIME_DECIMALS = 6


def maybe_binary(data: bytes) -> str | dict[str, str]:
    """OONI MaybeBinaryData (df-001): UTF-8 text as is, anything else as base64."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"format": "base64", "data": base64.b64encode(data).decode("ascii")}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass
class Trace:
    """All events of one measurement, in the order they completed."""

    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)
    queries: list[dict[str, Any]] = field(default_factory=list)
    tcp_connect: list[dict[str, Any]] = field(default_factory=list)
    tls_handshakes: list[dict[str, Any]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    network_events: list[dict[str, Any]] = field(default_factory=list)
    udp_exchanges: list[dict[str, Any]] = field(default_factory=list)
    controls: list[dict[str, Any]] = field(default_factory=list)
    _ids: Any = field(default_factory=lambda: itertools.count(1), repr=False)

    def __post_init__(self) -> None:
        if not self.started:
            self.started = self.clock()

    def elapsed(self) -> float:
        return round(self.clock() - self.started, _TIME_DECIMALS)

    def transaction(self, *tags: str) -> "Transaction":
        return Transaction(self, next(self._ids), tuple(tags))

    def event_arrays(self) -> dict[str, list[dict[str, Any]]]:
        """The OONI arrays for `test_keys`."""
        return {
            "queries": self.queries,
            "tcp_connect": self.tcp_connect,
            "tls_handshakes": self.tls_handshakes,
            "requests": self.requests,
            "network_events": self.network_events,
        }


@dataclass(frozen=True)
class Transaction:
    """One attempt's id and tags; every entry it records is stamped with both."""

    trace: Trace
    id: int
    tags: tuple[str, ...]

    def now(self) -> float:
        return self.trace.elapsed()

    def stamp(self, t0: float) -> dict[str, Any]:
        return {"t0": t0, "t": self.now(), "transaction_id": self.id, "tags": list(self.tags)}

    def network_event(self, t0: float, operation: str, *, address: str | None = None,
                      proto: str | None = None, num_bytes: int | None = None,
                      failure: str | None = None) -> None:
        entry: dict[str, Any] = {"operation": operation, "failure": failure}
        if address is not None:
            entry["address"] = address
        if proto is not None:
            entry["proto"] = proto
        if num_bytes is not None:
            entry["num_bytes"] = num_bytes
        entry.update(self.stamp(t0))
        self.trace.network_events.append(entry)

    def tagged(self, *more: str) -> "Transaction":
        """The same transaction with extra tags (e.g. a control's role)."""
        return Transaction(self.trace, self.id, self.tags + more)
