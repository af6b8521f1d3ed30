"""flctl's one door to the broker: connect, read retained state, publish retained specs, disconnect.

Built on `broker.Session` (MQTT v5). flctl is a short-lived client: it connects with a clean start and
a session that expires at disconnect, so no broker keeps queueing for a CLI that has gone away.
Errors of the broker package, paho and the socket layer are translated here, and only here, into
flctl's own (`BrokerUnreachableError`, `PublishFailedError`).

Reading retained state is subscribe, then `Session.barrier` (every retained message of the
subscriptions is in the inbox when it returns), then draining the inbox. The session uses manual
acks (QoS 1): each message is acked as soon as it is recorded.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import queue
import re
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

import broker
from flctl._errors import BrokerError, BrokerUnreachableError, NoAnswerError, PublishFailedError, UsageError
from flctl.printers import Retained
from schemas import Channel, NodeReply, NodeRequest, TopicError, Topics

# The socket-level check runs once, this long after the first connection attempt had its chance.
_FIRST_ATTEMPT = 0.25


def default_client_id() -> str:
    """`flctl-<user>-<pid>`, reduced to the characters an MQTT client id (and our sync topic) allows."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "user"
    user = re.sub(r"[^A-Za-z0-9_.-]", "_", user)[:64] or "user"
    return f"flctl-{user}-{os.getpid()}"


@dataclass(frozen=True)
class BrokerOptions:
    """Where and how to connect: the connection settings (flags > FLCTL_* > node config > defaults) and
    flctl's own options."""

    connection: broker.ConnectionSettings
    prefix: str = "fl"
    timeout: float = 10.0
    client_id: str = field(default_factory=default_client_id)

    @property
    def needs_password(self) -> bool:
        """A username and no password from any source: the prompt's case."""
        return self.connection.username is not None and self.connection.password is None

    def with_password(self, password: str) -> BrokerOptions:
        return replace(self, connection=self.connection.model_copy(update={"password": password}))

    def mqtt_settings(self) -> broker.MqttSettings:
        return broker.MqttSettings(
            client_id=self.client_id,
            # No keepalive: flctl has no --keepalive and ignores FLCTL_KEEPALIVE, as its sessions last seconds.
            **self.connection.model_dump(exclude={"keepalive"}),
            # A CLI run is one short, clean session: nothing to resume, nothing left on the broker.
            clean_start=True,
            session_expiry=0,
            reconnect_min=0.5,
            reconnect_max=2.0,
        )


def _socket_reason(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to host:port fails (refused, unknown host, unroutable), or None if it works."""
    try:
        with socket.create_connection((host, port), timeout=max(timeout, 0.1)):
            return None
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror or exc})"
    except TimeoutError:
        return f"TCP connect timed out after {timeout:g}s"
    except OSError as exc:
        return exc.strerror or str(exc)


class BrokerClient:
    """One short MQTT session: `with BrokerClient(options, log=...) as client: ...`."""

    def __init__(self, options: BrokerOptions, *, log: FilteringBoundLogger | None = None) -> None:
        self.options = options
        self.topics = Topics(options.prefix)
        self._inbox: queue.Queue[broker.Inbound] = queue.Queue()
        try:
            settings = options.mqtt_settings()
            self._session = broker.Session(settings, inbox=self._inbox, topics=self.topics, log=log)
        except ValueError as exc:  # settings the session cannot use (checked by the CLI first)
            raise UsageError(str(exc)) from exc
        except broker.ConnectError as exc:  # TLS files that do not load
            raise self._unreachable(str(exc)) from exc
        self._sync_topic = self.topics.sync(options.client_id)
        self._replies_filter: str | None = None
        self._replies: dict[bytes, broker.Inbound] = {}  # correlation data -> a reply not yet asked for
        self._latest: dict[str, Retained] = {}
        self._started = False

    def _unreachable(self, reason: str) -> BrokerUnreachableError:
        """The error for this client's broker, saying why it cannot be used."""
        return BrokerUnreachableError(self.options.connection.host, self.options.connection.port, reason)

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> BrokerClient:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def connect(self) -> None:
        """Connect within --timeout, or raise BrokerUnreachableError saying why (refused, unknown host, ...)."""
        opts = self.options
        try:
            self._session.start()
        except broker.ConnectError as exc:  # bad TLS files and other set-up errors
            raise self._unreachable(str(exc)) from exc
        self._started = True
        deadline = time.monotonic() + opts.timeout
        tcp_ok = False
        checked = False
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    hint = " (TCP connects: check the port, TLS and credentials)" if tcp_ok else ""
                    raise self._unreachable(f"no MQTT connection within {opts.timeout:g}s{hint}")
                slice_ = min(remaining, _FIRST_ATTEMPT)
                if self._session.wait_connected(slice_):
                    return
                refused = self._session.connect_error
                if refused is not None:  # the broker answered: bad credentials, not authorized, ...
                    hint = (
                        " (no password was given: --password-file FILE, FLCTL_PASSWORD, the config, or run on a "
                        "terminal to be asked)"
                        if opts.needs_password
                        else ""
                    )
                    raise self._unreachable(f"{refused}{hint}") from refused
                if not checked:
                    checked = True
                    reason = _socket_reason(
                        opts.connection.host, opts.connection.port, min(deadline - time.monotonic(), 2.0)
                    )
                    if reason is not None:
                        raise self._unreachable(reason)
                    tcp_ok = True
        except BrokerUnreachableError:
            self.close()
            raise

    def close(self) -> None:
        """Disconnect cleanly (bounded); never raises."""
        if not self._started:
            return
        self._started = False
        with contextlib.suppress(broker.BrokerError, OSError, TimeoutError):
            self._session.stop(timeout=min(self.options.timeout, 5.0))

    @property
    def max_payload(self) -> int:
        """The largest payload this connection may publish (the broker's packet limit, less headroom)."""
        return self._session.max_payload

    # -- reading -----------------------------------------------------------------------------------

    @property
    def latest(self) -> Mapping[str, Retained]:
        """The newest non-empty payload per topic seen so far (a deletion removes the topic)."""
        return dict(self._latest)

    def snapshot(self, filters: Sequence[str]) -> dict[str, Retained]:
        """Subscribe to `filters` and return every retained message they hold, by topic."""
        for flt in filters:
            self._session.subscribe(flt, qos=1)
        self._barrier()
        return dict(self._latest)

    def changes(self, timeout: float) -> set[str]:
        """Wait up to `timeout` for messages; return the topics whose payload changed (maybe none)."""
        changed: set[str] = set()
        try:
            msg = self._inbox.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return changed
        self._record(msg, changed)
        self._drain_nowait(changed)
        return changed

    def _barrier(self) -> None:
        try:
            self._session.barrier(self.options.timeout)
        except TimeoutError as exc:
            reason = f"the broker did not deliver the retained messages within {self.options.timeout:g}s"
            raise self._unreachable(reason) from exc
        except broker.BrokerError as exc:
            raise self._unreachable(str(exc)) from exc
        self._drain_nowait(set())

    def _drain_nowait(self, changed: set[str]) -> None:
        while True:
            try:
                self._record(self._inbox.get_nowait(), changed)
            except queue.Empty:
                return

    def _record(self, msg: broker.Inbound, changed: set[str]) -> None:
        try:
            if msg.topic == self._sync_topic:
                return
            if msg.response_topic is None and msg.correlation_data is not None and self._is_reply(msg.topic):
                self._replies[msg.correlation_data] = msg
                return
            previous = self._latest.get(msg.topic)
            if msg.payload:
                if previous is None or previous.payload != msg.payload:
                    changed.add(msg.topic)
                self._latest[msg.topic] = Retained(msg.payload, dict(msg.user_properties))
            elif previous is not None:
                changed.add(msg.topic)
                del self._latest[msg.topic]
        finally:
            self._session.ack(msg)

    # -- writing -----------------------------------------------------------------------------------

    def publish_retained(self, topic: str, payload: bytes, user_properties: Mapping[str, str] | None = None) -> None:
        """Publish retained at QoS 1 and wait for the broker's PUBACK (bounded by --timeout)."""
        try:
            result = self._session.publish(
                topic, payload, qos=1, retain=True, user_properties=dict(user_properties) if user_properties else None
            )
            result.wait(self.options.timeout)
        except broker.PayloadTooLarge as exc:
            reason = f"{exc.size} bytes exceed the connection's packet limit of {exc.limit} bytes"
            raise PublishFailedError(topic, reason, reason_code=exc.reason_code) from exc
        except broker.PublishError as exc:
            # broker words it "publish to 'topic' failed: <why> (reason code 0x87)"; keep the why and the code.
            reason = str(exc).removeprefix(f"publish to {topic!r} failed: ")
            raise PublishFailedError(topic, f"refused by the broker: {reason}", reason_code=exc.reason_code) from exc
        except TimeoutError as exc:
            raise PublishFailedError(topic, f"no PUBACK within {self.options.timeout:g}s", timed_out=True) from exc
        except broker.BrokerError as exc:
            raise PublishFailedError(topic, str(exc)) from exc

    # -- requests to node services -------------------------------------------------------------------

    def _is_reply(self, topic: str) -> bool:
        if self._replies_filter is None:
            return False
        try:
            return self.topics.parse(topic).channel is Channel.NODE_REPLY
        except TopicError:
            return False

    def request(self, node: str, request: NodeRequest) -> NodeReply:
        """Ask `node`'s service (MQTT v5 request/response: ResponseTopic, CorrelationData) and return its
        answer; NoAnswerError when none comes within --timeout, PublishFailedError when the broker refuses
        the request (an identity that may not ask: reason code 0x87)."""
        client_id = self.options.client_id
        if self._replies_filter is None:
            self._replies_filter = self.topics.replies_to(client_id)
            self._session.subscribe(self._replies_filter, qos=1)
            self._barrier()  # the subscription is in place before the first answer can come
        correlation = secrets.token_bytes(12)
        topic = self.topics.node_request(node, client_id)
        timeout = self.options.timeout
        try:
            self._session.publish(
                topic,
                request.to_json(),
                qos=1,
                response_topic=self.topics.node_reply(node, client_id),
                correlation_data=correlation,
            ).wait(timeout)
        except broker.PublishError as exc:
            reason = str(exc).removeprefix(f"publish to {topic!r} failed: ")
            raise PublishFailedError(topic, f"refused by the broker: {reason}", reason_code=exc.reason_code) from exc
        except TimeoutError as exc:
            raise PublishFailedError(topic, f"no PUBACK within {timeout:g}s", timed_out=True) from exc
        deadline = time.monotonic() + timeout
        while correlation not in self._replies:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise NoAnswerError(node, request.kind, timeout)
            try:
                msg = self._inbox.get(timeout=remaining)
            except queue.Empty:
                continue
            self._record(msg, set())
        msg = self._replies.pop(correlation)
        try:
            return NodeReply.model_validate_json(msg.payload)
        except ValidationError as exc:
            raise BrokerError(
                f"node {node} answered on {msg.topic} with something that is not a NodeReply: {exc}"
            ) from exc
