"""Secure aggregation on the wire, for the edge service: its subscriptions, the messages it routes to a
job, and what a job publishes (docs/dev/secagg.md, "Phases and topics").

For each secure aggregation job it runs, the service subscribes to the rounds' states
(`Topics.secagg_states_of`) and every edge's share bundles (`Topics.secagg_shares_of`), and drops both when
the job ends or is gone. A message is parsed here (`SecAggState`, `ShareBundle`) and handed to the job's
`EdgeJob.on_secagg_state` / `on_secagg_bundle`; an empty retained payload is the aggregator clearing a
finished round (nothing to do), and a payload that does not parse, or names another job, round or node
than its topic, is dropped with a log line naming the topic. A job's own messages go out retained, QoS 1.
"""

from __future__ import annotations

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from broker import BrokerError, Inbound, Session
from edge_trainer.engine import EdgeJob
from schemas import Channel, ParsedTopic, SecAggState, ShareBundle, TopicError, Topics

__all__ = ["SECAGG_CHANNELS", "SecAggWire"]

#: The channels this module routes.
SECAGG_CHANNELS = frozenset({Channel.SECAGG_STATE, Channel.SECAGG_SHARES})


class SecAggWire:
    """The edge service's secure aggregation topics (used on the logic thread)."""

    def __init__(self, session: Session, topics: Topics, node: str, log: FilteringBoundLogger) -> None:
        self._session = session
        self._topics = topics
        self._node = node
        self._log = log

    def filters(self, job: str) -> tuple[str, str]:
        return self._topics.secagg_states_of(job), self._topics.secagg_shares_of(job)

    def follow(self, job: EdgeJob) -> None:
        """Subscribe to a secure aggregation job's states and bundles (nothing for any other job)."""
        if job.secagg is not None:
            for topic_filter in self.filters(job.plan.job):
                self._session.subscribe(topic_filter)

    def unfollow(self, name: str) -> None:
        for topic_filter in self.filters(name):
            self._session.unsubscribe(topic_filter)

    def route(self, parsed: ParsedTopic, msg: Inbound, job: EdgeJob | None) -> None:
        """Hand a state or bundle of `parsed.job` to its job (None: no such job here, ignored)."""
        if job is None or job.secagg is None or not msg.payload or parsed.round is None:
            return
        try:
            if parsed.channel is Channel.SECAGG_STATE:
                state = SecAggState.model_validate_json(msg.payload)
                if state.job != parsed.job or state.round != parsed.round:
                    self._ignore(msg, f"it names job {state.job} round {state.round}, its topic another")
                    return
                job.on_secagg_state(state)
            else:
                bundle = ShareBundle.model_validate_json(msg.payload)
                if bundle.job != parsed.job or bundle.round != parsed.round or bundle.node != parsed.node:
                    self._ignore(msg, f"it names node {bundle.node} of job {bundle.job} round {bundle.round}")
                    return
                job.on_secagg_bundle(bundle)
        except ValidationError as exc:
            what = "SecAggState" if parsed.channel is Channel.SECAGG_STATE else "ShareBundle"
            self._ignore(msg, f"not a valid {what}: {exc.errors()[:3]}")

    def publish(self, step: str, job: str, round_: int, payload: bytes) -> None:
        """A job's keys, shares or unmask message (`JobPorts.publish_secagg`): retained, QoS 1."""
        try:
            topic = self._topics.secagg_step(job, round_, step, self._node)
            self._session.publish(topic, payload, qos=1, retain=True)
        except (BrokerError, TopicError) as exc:
            # Offline is no error (QoS 1 is queued until the reconnect); this is a stopped session or a
            # refused packet, which a retry would not mend. A restart republishes from the round file.
            self._log.error("secure aggregation publish failed", job=job, round=round_, step=step, error=str(exc))

    def _ignore(self, msg: Inbound, why: str) -> None:
        self._log.warning("secure aggregation message ignored", topic=msg.topic, reason=why)
