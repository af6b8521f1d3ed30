"""After every reconnect: does the broker still hold the retained state this node stands behind?

A broker killed -9 between two autosaves, or started from an empty or an older data directory, comes
back without (or with old copies of) the retained specs, statuses, plans and this node's presence. Its
CONNACK cannot tell: an old snapshot may still hold this node's session (``session present``). So every
new connection is audited the way the startup catches up, without blocking the logic thread:

1. the logic thread notices the new connection (`due`, polled by the service's tick) and `start`s:
   the controller collects retained statuses and plans again (`Controller.begin_audit`), the status,
   plan and global-manifest subscriptions are renewed (the spec subscription is renewed by the session on every connect, so
   the retained specs come again), and a thread waits for a `Session.barrier`;
2. the barrier's `AuditBarrier` event is queued behind every retained message of those subscriptions,
   so when the logic thread takes it (`finish`), everything the broker holds has been handled:
   deleted resources' leftovers are cleared (`Controller.end_audit`), every kept entry the broker did not
   deliver byte for byte on this connection is republished (`MqttPort.resync`), so is the last global
   model of each job of this process whose manifest it does not hold (`Job.republish_global`), and the state
   of each open secure aggregation round (`Job.republish_secagg`), and this node
   says ``online`` again (its last will may have said ``offline``).

A barrier that fails, or a connection that changed meanwhile, leaves the audit due: the next tick starts
it again.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from broker import BrokerError, Session
from cloud_aggregator.engine import Controller
from cloud_aggregator.service._port import MqttPort

__all__ = ["AuditBarrier", "ReconnectAudit"]


@dataclass(frozen=True)
class AuditBarrier:
    """The audit's barrier came back (`error` None) or failed, for connection `connection`."""

    connection: int
    error: str | None


class ReconnectAudit:
    """One audit at a time, for the newest connection that has not been audited yet."""

    def __init__(
        self,
        *,
        session: Session,
        filters: tuple[str, ...],
        emit: Callable[[AuditBarrier], None],
        barrier_timeout: float,
        log: FilteringBoundLogger,
    ) -> None:
        self._session = session
        self._filters = filters
        self._emit = emit
        self._timeout = barrier_timeout
        self._log = log
        self.audited = 0  # the connection whose retained state was checked (the startup sets the first)
        self._running: int | None = None

    def due(self) -> bool:
        session = self._session
        return self._running is None and session.connected and session.connection != self.audited

    def start(self, controller: Controller) -> None:
        connection = self._session.connection
        self._running = connection
        self._log.info("reconnected: checking the broker's retained state", connection=connection)
        controller.begin_audit()
        try:
            for flt in self._filters:
                self._session.subscribe(flt)
        except BrokerError as exc:
            self._emit(AuditBarrier(connection, str(exc)))
            return
        threading.Thread(target=self._barrier, args=(connection,), name="reconnect-audit", daemon=True).start()

    def _barrier(self, connection: int) -> None:
        error: str | None = None
        try:
            self._session.barrier(self._timeout)
        except (TimeoutError, BrokerError) as exc:
            error = str(exc)
        self._emit(AuditBarrier(connection, error))

    def finish(self, event: AuditBarrier, controller: Controller, port: MqttPort, announce: Callable[[], None]) -> None:
        self._running = None
        for flt in self._filters:
            try:
                self._session.unsubscribe(flt)
            except BrokerError as exc:
                self._log.warning("cannot drop an audit subscription", filter=flt, error=str(exc))
        if event.error is not None or event.connection != self._session.connection:
            self._log.warning("the audit of a reconnect did not complete; tried again", error=event.error)
            return
        controller.end_audit()
        republished = port.resync(event.connection)
        for engine in controller.engines():
            engine.republish_global(
                functools.partial(port.holds_global, engine.facts.name, connection=event.connection)
            )
            engine.republish_secagg()
        announce()
        self.audited = event.connection
        self._log.info("broker's retained state checked", connection=event.connection, republished=republished)
