"""Answering clients' requests to a node service (`flctl logs`, `flctl audit`): MQTT v5 request/response.

A request arrives on ``fl/nodes/<node>/requests/<client>`` (`schemas.NodeRequest`) with a ResponseTopic
and CorrelationData; the answer (`schemas.NodeReply`) goes to ``fl/nodes/<node>/replies/<client>`` with
the same CorrelationData. The service answers only on that topic, whatever the request names: the topic
levels are what the broker's ACL vouches for (only admins write requests, each under its own name; a node
writes only its own replies; a client reads only replies to itself), so an answer can never be steered
to another client, and a request whose response topic differs is refused with a log line.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from broker._errors import BrokerError
from broker._messages import Inbound
from broker._session import Session
from runtime import JobFiles, answer_request
from schemas import Channel, NodeReply, NodeRequest, TopicError, Topics, check_name

__all__ = ["RequestServer"]

_ESCAPE_FACTOR = 6


class RequestServer:
    """Answers the requests to one node; `files(job)` says where a job's files are (None: not this node's job).

    Runs on the service's logic thread (`handle` is called with each request message); reading is bounded
    by the reply cap, so a request never holds the thread for long."""

    def __init__(
        self,
        session: Session,
        topics: Topics,
        node: str,
        files: Callable[[str], JobFiles | None],
        log: FilteringBoundLogger,
    ) -> None:
        self._session = session
        self._topics = topics
        self._node = node
        self._files = files
        self._log = log

    @property
    def filter(self) -> str:
        """The subscription: every request to this node."""
        return self._topics.requests_to(self._node)

    def handle(self, msg: Inbound) -> bool:
        """Answer `msg` if it is a request to this node; return whether it was one."""
        try:
            parsed = self._topics.parse(msg.topic)
        except TopicError:
            return False
        if parsed.channel is not Channel.NODE_REQUEST or parsed.node != self._node or parsed.name is None:
            return False
        client = parsed.name
        reply_topic = self._topics.node_reply(self._node, client)
        log = self._log.bind(client=client)
        if msg.response_topic is not None and msg.response_topic != reply_topic:
            log.warning("request refused: its response topic is not the asker's", response_topic=msg.response_topic)
            return True
        try:
            request = NodeRequest.model_validate_json(msg.payload)
            check_name(request.job, "job name")
        except (ValidationError, ValueError) as exc:
            error = f"not a valid NodeRequest: {str(exc).splitlines()[0]}"
            reply = NodeReply(node=self._node, job="-", kind="logs", ok=False, error=error)
        else:
            # JSON escaping can make text up to 6 times longer (\u00XX): the answer must fit one packet.
            fits = max(1, self._session.max_payload // _ESCAPE_FACTOR)
            if request.max_bytes > fits:
                request = request.model_copy(update={"max_bytes": fits})
            reply = answer_request(request, self._node, self._files(request.job))
            log.info("request answered", kind=request.kind, job=request.job, ok=reply.ok, bytes=len(reply.text))
        try:
            self._session.publish(reply_topic, reply.to_json(), qos=1, correlation_data=msg.correlation_data)
        except BrokerError as exc:
            log.warning("reply not sent", error=str(exc))
        return True
