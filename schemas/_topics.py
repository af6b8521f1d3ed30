"""The MQTT topic layout, defined here and nowhere else.

Every topic lives under a prefix (default ``fl``). Resources are addressed like Kubernetes API paths,
by plural kind and name; a job's runtime traffic lives under the job's own path, per round:

    fl/<kind>/<name>/spec                                   resource document (YAML or JSON), retained
    fl/<kind>/<name>/status                                 status JSON, retained
    fl/federatedlearningjobs/<job>/plan                     the validated, resolved job, retained
    fl/federatedlearningjobs/<job>/workers/<node>/status    one worker's state, retained
    fl/federatedlearningjobs/<job>/events                   the job's event stream (one JSON line each), not retained
    fl/federatedlearningjobs/<job>/rounds/<r>/global/manifest       global model of round r, retained
    fl/federatedlearningjobs/<job>/rounds/<r>/global/chunks/<i>     its chunks, retained
    fl/federatedlearningjobs/<job>/rounds/<r>/updates/<node>/<transfer>/manifest   an update
    fl/federatedlearningjobs/<job>/rounds/<r>/updates/<node>/<transfer>/chunks/<i> its chunks
    fl/federatedlearningjobs/<job>/rounds/<r>/acks/<node>   the aggregator's receipt for an update
    fl/federatedlearningjobs/<job>/rounds/<r>/record        the closed round's full record, retained
    fl/federatedlearningjobs/<job>/rounds/<r>/secagg/state          secure aggregation: the round's phase, retained
    fl/federatedlearningjobs/<job>/rounds/<r>/secagg/<step>/<node>  an edge's keys, shares or unmask answer, retained
    fl/nodes/<node>/status                                  node presence (last will), retained
    fl/nodes/<node>/requests/<client>                       a request to a node service (logs, ledger)
    fl/nodes/<node>/replies/<client>                        its answer (the request's MQTT v5 response topic)
    fl/clients/<client>/sync                                a client's own barrier topic
    fl/sites/<site>/bridge                                  a site bridge's state, "1" up / "0" down (the
                                                            bridge's own notification, retained)

A request's topic names the node asked and the client asking, its reply's topic the node answering and
the client it answers: the broker's ACL lets only admins write requests (each on its own level), a node
read only requests to itself and write only replies from itself, and a client read only replies to
itself, so no edge can ask another for its logs, read another's answers or answer in another's name.

The node name is a whole topic level wherever a node publishes, so broker ACLs can key on it
(``pattern write fl/federatedlearningjobs/+/rounds/+/updates/%u/#``): the builders of one node's (or
client's) topics and filters take `AclPattern.USERNAME` in place of the name for such ACL lines.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from enum import Enum, StrEnum

from schemas._errors import TopicError

# RFC 1123 label/subdomain names, as Kubernetes requires for object and node names. They can
# never contain the MQTT separators or wildcards, which is what makes them safe topic levels.
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_TRANSFER_RE = re.compile(r"^[0-9a-f]{8,64}$")
# A client id for the barrier topic is an MQTT client id, which is freer than a node name.
_CLIENT_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
# Match these patterns with `fullmatch`, never `match`: with `match`, `$` also matches before a
# trailing newline, so "edge1\n" passed as a name and became a topic level (fixed in test review).
# Round and chunk levels are canonical decimals (what the builders write): no leading zeros and no
# non-ASCII digits (str.isdigit accepts "\u0661", which int() reads as 1).
_UINT_RE = re.compile(r"0|[1-9][0-9]*")


class Kind(StrEnum):
    """Resource kinds, by the plural name that appears in topics (as in Kubernetes API paths)."""

    DATASET = "datasets"
    MODEL = "models"
    JOB = "federatedlearningjobs"

    @property
    def kind(self) -> str:
        """The `kind:` of the document, e.g. ``FederatedLearningJob``."""
        return _KIND_NAMES[self]

    @classmethod
    def from_kind(cls, kind: str) -> Kind:
        for member, name in _KIND_NAMES.items():
            if name == kind:
                return member
        raise KeyError(kind)


_KIND_NAMES = {Kind.DATASET: "Dataset", Kind.MODEL: "Model", Kind.JOB: "FederatedLearningJob"}


def check_name(value: str, what: str = "name") -> str:
    """Return `value` if it is a valid resource or node name, else raise ValueError saying why."""
    if not NAME_RE.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: expected lowercase letters, digits, '-' or '.', "
            "starting and ending with a letter or digit, at most 253 characters"
        )
    return value


class AclPattern(Enum):
    """A Mosquitto ACL placeholder that stands for one whole topic level in a `pattern` line.

    The builders of one node's (or client's) topics and filters accept it where they take the name, so
    the broker's ACL spells the topic layout through this module too. Deliberately not a `str`: a name
    is still checked strictly, and the string ``"%u"`` is refused like any other invalid name.
    """

    #: ``%u``: the connecting client's username (brokers from `flctl broker init` key every node on it).
    USERNAME = "%u"


class Channel(StrEnum):
    """What a received topic carries; `ParsedTopic.channel`."""

    SPEC = "spec"
    STATUS = "status"
    PLAN = "plan"
    WORKER_STATUS = "worker-status"
    EVENTS = "events"
    GLOBAL_MANIFEST = "global-manifest"
    GLOBAL_CHUNK = "global-chunk"
    UPDATE_MANIFEST = "update-manifest"
    UPDATE_CHUNK = "update-chunk"
    ACK = "ack"
    ROUND_RECORD = "round-record"
    NODE_STATUS = "node-status"
    NODE_REQUEST = "node-request"
    NODE_REPLY = "node-reply"
    SYNC = "sync"
    SECAGG_STATE = "secagg-state"
    SECAGG_KEYS = "secagg-keys"
    SECAGG_SHARES = "secagg-shares"
    SECAGG_UNMASK = "secagg-unmask"
    SITE_BRIDGE = "site-bridge"  # `ParsedTopic.name` is the site


#: The per-node steps of secure aggregation (`Channel` of each): what an edge publishes under
#: ``rounds/<r>/secagg/<step>/<node>``.
SECAGG_STEPS = {"keys": Channel.SECAGG_KEYS, "shares": Channel.SECAGG_SHARES, "unmask": Channel.SECAGG_UNMASK}


@dataclass(frozen=True)
class ParsedTopic:
    """A received topic taken apart. Fields that the channel does not have are None."""

    channel: Channel
    kind: Kind | None = None
    name: str | None = None
    round: int | None = None
    node: str | None = None
    transfer: str | None = None
    chunk: int | None = None

    @property
    def job(self) -> str:
        """The job name of a job-runtime topic."""
        if self.kind is not Kind.JOB or self.name is None:
            raise TopicError(self.channel.value, "not a job topic")
        return self.name


class Topics:
    """Builds every topic and subscription filter of one deployment (one prefix)."""

    def __init__(self, prefix: str = "fl") -> None:
        levels = prefix.split("/")
        if not prefix or any(not lvl or "+" in lvl or "#" in lvl for lvl in levels):
            raise TopicError(prefix, "prefix must be non-empty levels without '+' or '#'")
        self.prefix = prefix
        self._depth = len(levels)

    # -- publish topics ------------------------------------------------------------------------

    def spec(self, kind: Kind, name: str) -> str:
        return self._build(kind.value, _name(name), "spec")

    def status(self, kind: Kind, name: str) -> str:
        return self._build(kind.value, _name(name), "status")

    def plan(self, job: str) -> str:
        return self._build(Kind.JOB.value, _name(job), "plan")

    def events(self, job: str) -> str:
        """The job's event stream (`JobEvent` lines; QoS 1, not retained)."""
        return self._build(Kind.JOB.value, _name(job), "events")

    def worker_status(self, job: str, node: str) -> str:
        return self._build(Kind.JOB.value, _name(job), "workers", _name(node), "status")

    def global_manifest(self, job: str, round_: int) -> str:
        return self._build(*self._round(job, round_), "global", "manifest")

    def global_chunk(self, job: str, round_: int, index: int) -> str:
        return self._build(*self._round(job, round_), "global", "chunks", _index(index))

    def update_manifest(self, job: str, round_: int, node: str, transfer: str) -> str:
        return self._build(*self._update(job, round_, node, transfer), "manifest")

    def update_chunk(self, job: str, round_: int, node: str, transfer: str, index: int) -> str:
        return self._build(*self._update(job, round_, node, transfer), "chunks", _index(index))

    def ack(self, job: str, round_: int, node: str) -> str:
        return self._build(*self._round(job, round_), "acks", _name(node))

    def round_record(self, job: str, round_: int) -> str:
        """The full `RoundRecord` of a closed round (the job status keeps only the recent summaries)."""
        return self._build(*self._round(job, round_), "record")

    def secagg_state(self, job: str, round_: int) -> str:
        """Secure aggregation: the round's `SecAggState` (the aggregator's; retained)."""
        return self._build(*self._round(job, round_), "secagg", "state")

    def secagg_step(self, job: str, round_: int, step: str, node: str) -> str:
        """Secure aggregation: `node`'s message of `step` (keys, shares, unmask) in round `round_` (retained)."""
        if step not in SECAGG_STEPS:
            raise TopicError(step, f"secure aggregation step must be one of {', '.join(SECAGG_STEPS)}")
        return self._build(*self._round(job, round_), "secagg", step, _name(node))

    def secagg_of(self, job: str) -> str:
        """Every secure aggregation message of one job (the aggregator's and its edges' filter)."""
        return self._build(Kind.JOB.value, _name(job), "rounds", "+", "secagg", "#")

    def secagg_states_of(self, job: str) -> str:
        """The `SecAggState` of every round of one job (an edge's subscription)."""
        return self._build(Kind.JOB.value, _name(job), "rounds", "+", "secagg", "state")

    def secagg_shares_of(self, job: str) -> str:
        """Every `ShareBundle` of one job (an edge's subscription: it opens only the entries sealed for it)."""
        return self._build(Kind.JOB.value, _name(job), "rounds", "+", "secagg", "shares", "+")

    def secagg_writes(self, step: str, node: str | AclPattern) -> str:
        """The ACL filter of what `node` may publish for `step` in any job and round."""
        if step not in SECAGG_STEPS:
            raise TopicError(step, f"secure aggregation step must be one of {', '.join(SECAGG_STEPS)}")
        return self._build(Kind.JOB.value, "+", "rounds", "+", "secagg", step, _node(node))

    def all_secagg_states(self) -> str:
        return self._build(Kind.JOB.value, "+", "rounds", "+", "secagg", "state")

    def all_secagg_shares(self) -> str:
        return self._build(Kind.JOB.value, "+", "rounds", "+", "secagg", "shares", "+")

    def all_secagg(self) -> str:
        return self._build(Kind.JOB.value, "+", "rounds", "+", "secagg", "#")

    def node_status(self, node: str | AclPattern) -> str:
        return self._build("nodes", _node(node), "status")

    def site_bridge(self, site: str) -> str:
        """Where a site broker's bridge announces its state on both brokers (Mosquitto's notification_topic)."""
        return self._build("sites", check_name(site, "site"), "bridge")

    def all_site_bridges(self) -> str:
        return self._build("sites", "+", "bridge")

    def site_local(self, site: str) -> Topics:
        """The layout of a site's own traffic, under ``<prefix>/sites/<site>``: a hierarchical job's updates
        from the site's edges to its site aggregator and that aggregator's acks. No site bridge carries it
        (the bridge's topic lines name the prefix's own trees), so individual updates stay on the site."""
        return Topics(f"{self.prefix}/sites/{check_name(site, 'site')}")

    def parse_site_local(self, topic: str) -> tuple[str, ParsedTopic]:
        """(site, what `site_local(site).parse` makes of `topic`); TopicError if it is no site's own topic."""
        levels = topic.split("/")
        depth = self._depth
        if len(levels) < depth + 3 or "/".join(levels[:depth]) != self.prefix or levels[depth] != "sites":
            raise TopicError(topic, f"not under {self.prefix}/sites/<site>/")
        site = levels[depth + 1]
        try:
            check_name(site, "site")
        except ValueError as exc:
            raise TopicError(topic, str(exc)) from exc
        return site, self.site_local(site).parse(topic)

    def sync(self, client_id: str) -> str:
        return self._build("clients", _client(client_id), "sync")

    def node_request(self, node: str, client_id: str) -> str:
        """A request from `client_id` to the service of `node` (`NodeRequest`)."""
        return self._build("nodes", _name(node), "requests", _client(client_id))

    def node_reply(self, node: str, client_id: str) -> str:
        """The answer of `node` to `client_id` (`NodeReply`): what a request names as its response topic."""
        return self._build("nodes", _name(node), "replies", _client(client_id))

    # -- subscription filters ------------------------------------------------------------------

    def all_specs(self) -> str:
        return self._build("+", "+", "spec")

    def all_statuses(self) -> str:
        return self._build("+", "+", "status")

    def all_plans(self) -> str:
        return self._build(Kind.JOB.value, "+", "plan")

    def all_events(self) -> str:
        """Every job's event stream."""
        return self._build(Kind.JOB.value, "+", "events")

    def all_worker_statuses(self) -> str:
        return self._build(Kind.JOB.value, "+", "workers", "+", "status")

    def worker_statuses_of(self, node: str | AclPattern) -> str:
        """One node's worker status in every job."""
        return self._build(Kind.JOB.value, "+", "workers", _node(node), "status")

    def all_updates(self) -> str:
        return self._build(Kind.JOB.value, "+", "rounds", "+", "updates", "#")

    def updates_of(self, node: str | AclPattern) -> str:
        """One node's updates (manifests and chunks) in every job and round."""
        return self._build(Kind.JOB.value, "+", "rounds", "+", "updates", _node(node), "#")

    def all_globals(self) -> str:
        return self._build(Kind.JOB.value, "+", "rounds", "+", "global", "#")

    def all_global_manifests(self) -> str:
        """The manifests of every retained global model (not their chunks): what shows which rounds are held."""
        return self._build(Kind.JOB.value, "+", "rounds", "+", "global", "manifest")

    def job_globals(self, job: str) -> str:
        return self._build(Kind.JOB.value, _name(job), "rounds", "+", "global", "#")

    def all_round_records(self) -> str:
        """Every job's per-round records (what admins and viewers may read)."""
        return self._build(Kind.JOB.value, "+", "rounds", "+", "record")

    def job_round_records(self, job: str) -> str:
        return self._build(Kind.JOB.value, _name(job), "rounds", "+", "record")

    def all_acks(self) -> str:
        return self._build(Kind.JOB.value, "+", "rounds", "+", "acks", "+")

    def acks_for(self, node: str | AclPattern) -> str:
        return self._build(Kind.JOB.value, "+", "rounds", "+", "acks", _node(node))

    def all_node_statuses(self) -> str:
        return self._build("nodes", "+", "status")

    def requests_to(self, node: str | AclPattern) -> str:
        """Every request to one node: what its service subscribes to (and the ACL lets it read)."""
        return self._build("nodes", _node(node), "requests", "+")

    def requests_from(self, client_id: str | AclPattern) -> str:
        """One client's requests to every node: what the ACL lets an admin write."""
        return self._build("nodes", "+", "requests", _client(client_id))

    def replies_of(self, node: str | AclPattern) -> str:
        """Every answer of one node: what the ACL lets its service write."""
        return self._build("nodes", _node(node), "replies", "+")

    def replies_to(self, client_id: str | AclPattern) -> str:
        """Every node's answers to one client: what the client subscribes to (and the ACL lets it read)."""
        return self._build("nodes", "+", "replies", _client(client_id))

    def job_tree(self, job: str) -> str:
        """Everything of one job: what `mosquitto_sub` needs to watch or a delete needs to clear."""
        return self._build(Kind.JOB.value, _name(job), "#")

    def client_tree(self, client_id: str | AclPattern) -> str:
        """Everything under one client's own level (its sync topic): what the ACL lets that client use."""
        return self._build("clients", _client(client_id), "#")

    def everything(self) -> str:
        return self._build("#")

    # -- parsing -------------------------------------------------------------------------------

    def parse(self, topic: str) -> ParsedTopic:
        """Take a received topic apart; raise TopicError if it is not part of this layout."""
        levels = topic.split("/")
        if "/".join(levels[: self._depth]) != self.prefix:
            raise TopicError(topic, f"not under prefix {self.prefix!r}")
        rest = levels[self._depth :]
        try:
            parsed = _parse_levels(rest)
        except (ValueError, KeyError) as exc:
            raise TopicError(topic, f"not part of the topic layout ({exc})") from exc
        if parsed is None:
            raise TopicError(topic, "not part of the topic layout")
        return parsed

    # -- helpers -------------------------------------------------------------------------------

    def _build(self, *levels: str) -> str:
        return "/".join((self.prefix, *levels))

    @staticmethod
    def _round(job: str, round_: int) -> tuple[str, ...]:
        return (Kind.JOB.value, _name(job), "rounds", _uint(round_, "round"))

    def _update(self, job: str, round_: int, node: str, transfer: str) -> tuple[str, ...]:
        if not _TRANSFER_RE.fullmatch(transfer):
            raise TopicError(transfer, "transfer id must be 8-64 lowercase hex digits")
        return (*self._round(job, round_), "updates", _name(node), transfer)


def _name(value: str) -> str:
    try:
        return check_name(value)
    except ValueError as exc:
        raise TopicError(value, str(exc)) from exc


def _node(value: str | AclPattern) -> str:
    """A node level: a checked name, or an ACL placeholder (only ever as the explicit `AclPattern`)."""
    return value.value if isinstance(value, AclPattern) else _name(value)


def _client(value: str | AclPattern) -> str:
    if isinstance(value, AclPattern):
        return value.value
    if not _CLIENT_RE.fullmatch(value):
        raise TopicError(value, "client id must be 1-128 of [A-Za-z0-9_.:-]")
    return value


def _index(index: int) -> str:
    return _uint(index, "chunk index")


def _uint(value: int, what: str) -> str:
    # operator.index: an int (or numpy integer) but not a float, whose str() ("1.0") parse() would
    # refuse; a bool is refused too, as str(True) would have become the level "True".
    try:
        if isinstance(value, bool):
            raise TypeError
        number = operator.index(value)
    except TypeError:
        raise TopicError(repr(value), f"{what} must be an integer") from None
    if number < 0:
        raise TopicError(str(number), f"{what} must be >= 0")
    return str(number)


def _int(level: str) -> int:
    if not _UINT_RE.fullmatch(level):
        raise ValueError(f"{level!r} is not a non-negative integer in canonical decimal form")
    return int(level)


def _parse_levels(rest: list[str]) -> ParsedTopic | None:  # noqa: PLR0911, PLR0912 - one branch per layout row
    n = len(rest)
    if n == 3 and rest[0] == "nodes" and rest[2] == "status":
        return ParsedTopic(Channel.NODE_STATUS, node=check_name(rest[1]))
    if n == 4 and rest[0] == "nodes" and rest[2] in ("requests", "replies"):
        if not _CLIENT_RE.fullmatch(rest[3]):
            raise ValueError(f"client id {rest[3]!r} is not 1-128 of [A-Za-z0-9_.:-]")
        channel = Channel.NODE_REQUEST if rest[2] == "requests" else Channel.NODE_REPLY
        return ParsedTopic(channel, node=check_name(rest[1]), name=rest[3])
    if n == 3 and rest[0] == "sites" and rest[2] == "bridge":
        return ParsedTopic(Channel.SITE_BRIDGE, name=check_name(rest[1], "site"))
    if n == 3 and rest[0] == "clients" and rest[2] == "sync":
        # Validate the client id as sync() does, so parse() accepts only what the builders write.
        if not _CLIENT_RE.fullmatch(rest[1]):
            raise ValueError(f"client id {rest[1]!r} is not 1-128 of [A-Za-z0-9_.:-]")
        return ParsedTopic(Channel.SYNC, name=rest[1])
    if n < 3:
        return None
    kind = Kind(rest[0])
    name = check_name(rest[1])
    if n == 3 and rest[2] == "spec":
        return ParsedTopic(Channel.SPEC, kind, name)
    if n == 3 and rest[2] == "status":
        return ParsedTopic(Channel.STATUS, kind, name)
    if kind is not Kind.JOB:
        return None
    if n == 3 and rest[2] == "plan":
        return ParsedTopic(Channel.PLAN, kind, name)
    if n == 3 and rest[2] == "events":
        return ParsedTopic(Channel.EVENTS, kind, name)
    if n == 5 and rest[2] == "workers" and rest[4] == "status":
        return ParsedTopic(Channel.WORKER_STATUS, kind, name, node=check_name(rest[3]))
    if n == 5 and rest[2] == "rounds" and rest[4] == "record":
        return ParsedTopic(Channel.ROUND_RECORD, kind, name, _int(rest[3]))
    if n < 6 or rest[2] != "rounds":
        return None
    round_ = _int(rest[3])
    section = rest[4]
    if section == "global":
        if n == 6 and rest[5] == "manifest":
            return ParsedTopic(Channel.GLOBAL_MANIFEST, kind, name, round_)
        if n == 7 and rest[5] == "chunks":
            return ParsedTopic(Channel.GLOBAL_CHUNK, kind, name, round_, chunk=_int(rest[6]))
        return None
    if section == "secagg":
        if n == 6 and rest[5] == "state":
            return ParsedTopic(Channel.SECAGG_STATE, kind, name, round_)
        if n == 7 and rest[5] in SECAGG_STEPS:
            return ParsedTopic(SECAGG_STEPS[rest[5]], kind, name, round_, node=check_name(rest[6]))
        return None
    if section == "acks" and n == 6:
        return ParsedTopic(Channel.ACK, kind, name, round_, node=check_name(rest[5]))
    if section == "updates" and n >= 8:
        node = check_name(rest[5])
        transfer = rest[6]
        if not _TRANSFER_RE.fullmatch(transfer):
            raise ValueError(f"transfer id {transfer!r} is not 8-64 lowercase hex digits")
        if n == 8 and rest[7] == "manifest":
            return ParsedTopic(Channel.UPDATE_MANIFEST, kind, name, round_, node, transfer)
        if n == 9 and rest[7] == "chunks":
            return ParsedTopic(Channel.UPDATE_CHUNK, kind, name, round_, node, transfer, _int(rest[8]))
    return None
