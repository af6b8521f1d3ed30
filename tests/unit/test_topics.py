"""The MQTT topic layout: `schemas._topics` (docs/architecture.md, "Topics")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import AclPattern, Channel, Kind, ParsedTopic, TopicError, Topics, check_name

JOB = "surface-defect-detection"
JOBS = f"fl/federatedlearningjobs/{JOB}"
TRANSFER = "0123abcd4567ef89"


def matches(filter_: str, topic: str) -> bool:
    """MQTT topic-filter matching (`+` one level, `#` the rest), as the broker does it."""
    f_levels, t_levels = filter_.split("/"), topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


def rebuild(topics: Topics, p: ParsedTopic) -> str:
    """Build the topic a ParsedTopic describes, with the builder for its channel."""
    assert p.name is not None or p.channel is Channel.NODE_STATUS
    builders: dict[Channel, Callable[[], str]] = {
        Channel.SPEC: lambda: topics.spec(p.kind, p.name),  # type: ignore[arg-type]
        Channel.STATUS: lambda: topics.status(p.kind, p.name),  # type: ignore[arg-type]
        Channel.PLAN: lambda: topics.plan(p.job),
        Channel.EVENTS: lambda: topics.events(p.job),
        Channel.WORKER_STATUS: lambda: topics.worker_status(p.job, p.node),  # type: ignore[arg-type]
        Channel.GLOBAL_MANIFEST: lambda: topics.global_manifest(p.job, p.round),  # type: ignore[arg-type]
        Channel.GLOBAL_CHUNK: lambda: topics.global_chunk(p.job, p.round, p.chunk),  # type: ignore[arg-type]
        Channel.UPDATE_MANIFEST: lambda: topics.update_manifest(p.job, p.round, p.node, p.transfer),  # type: ignore[arg-type]
        Channel.UPDATE_CHUNK: lambda: topics.update_chunk(p.job, p.round, p.node, p.transfer, p.chunk),  # type: ignore[arg-type]
        Channel.ACK: lambda: topics.ack(p.job, p.round, p.node),  # type: ignore[arg-type]
        Channel.ROUND_RECORD: lambda: topics.round_record(p.job, p.round),  # type: ignore[arg-type]
        Channel.NODE_STATUS: lambda: topics.node_status(p.node),  # type: ignore[arg-type]
        Channel.SYNC: lambda: topics.sync(p.name),  # type: ignore[arg-type]
    }
    return builders[p.channel]()


# Every publish topic of the architecture table: (builder, documented topic, what parse() gives).
LAYOUT: list[tuple[Callable[[Topics], str], str, ParsedTopic]] = [
    (
        lambda t: t.spec(Kind.DATASET, "edge1-data"),
        "fl/datasets/edge1-data/spec",
        ParsedTopic(Channel.SPEC, Kind.DATASET, "edge1-data"),
    ),
    (
        lambda t: t.spec(Kind.MODEL, "sdd-model"),
        "fl/models/sdd-model/spec",
        ParsedTopic(Channel.SPEC, Kind.MODEL, "sdd-model"),
    ),
    (
        lambda t: t.spec(Kind.JOB, JOB),
        f"{JOBS}/spec",
        ParsedTopic(Channel.SPEC, Kind.JOB, JOB),
    ),
    (
        lambda t: t.status(Kind.DATASET, "edge1-data"),
        "fl/datasets/edge1-data/status",
        ParsedTopic(Channel.STATUS, Kind.DATASET, "edge1-data"),
    ),
    (
        lambda t: t.status(Kind.JOB, JOB),
        f"{JOBS}/status",
        ParsedTopic(Channel.STATUS, Kind.JOB, JOB),
    ),
    (
        lambda t: t.plan(JOB),
        f"{JOBS}/plan",
        ParsedTopic(Channel.PLAN, Kind.JOB, JOB),
    ),
    (
        lambda t: t.events(JOB),
        f"{JOBS}/events",
        ParsedTopic(Channel.EVENTS, Kind.JOB, JOB),
    ),
    (
        lambda t: t.worker_status(JOB, "edge1"),
        f"{JOBS}/workers/edge1/status",
        ParsedTopic(Channel.WORKER_STATUS, Kind.JOB, JOB, node="edge1"),
    ),
    (
        lambda t: t.update_manifest(JOB, 3, "edge1", TRANSFER),
        f"{JOBS}/rounds/3/updates/edge1/{TRANSFER}/manifest",
        ParsedTopic(Channel.UPDATE_MANIFEST, Kind.JOB, JOB, 3, "edge1", TRANSFER),
    ),
    (
        lambda t: t.update_chunk(JOB, 3, "edge1", TRANSFER, 7),
        f"{JOBS}/rounds/3/updates/edge1/{TRANSFER}/chunks/7",
        ParsedTopic(Channel.UPDATE_CHUNK, Kind.JOB, JOB, 3, "edge1", TRANSFER, 7),
    ),
    (
        lambda t: t.global_manifest(JOB, 0),
        f"{JOBS}/rounds/0/global/manifest",
        ParsedTopic(Channel.GLOBAL_MANIFEST, Kind.JOB, JOB, 0),
    ),
    (
        lambda t: t.global_chunk(JOB, 2, 0),
        f"{JOBS}/rounds/2/global/chunks/0",
        ParsedTopic(Channel.GLOBAL_CHUNK, Kind.JOB, JOB, 2, chunk=0),
    ),
    (
        lambda t: t.ack(JOB, 3, "edge2"),
        f"{JOBS}/rounds/3/acks/edge2",
        ParsedTopic(Channel.ACK, Kind.JOB, JOB, 3, node="edge2"),
    ),
    (
        lambda t: t.round_record(JOB, 12),
        f"{JOBS}/rounds/12/record",
        ParsedTopic(Channel.ROUND_RECORD, Kind.JOB, JOB, 12),
    ),
    (
        lambda t: t.node_status("edge1"),
        "fl/nodes/edge1/status",
        ParsedTopic(Channel.NODE_STATUS, node="edge1"),
    ),
    (
        lambda t: t.sync("cloud0"),
        "fl/clients/cloud0/sync",
        ParsedTopic(Channel.SYNC, name="cloud0"),
    ),
]
LAYOUT_IDS = [expected.split("/", 1)[1] for _, expected, _ in LAYOUT]


# -- builders and parse ------------------------------------------------------------------------


@pytest.mark.parametrize(("build", "expected", "parsed"), LAYOUT, ids=LAYOUT_IDS)
def test_builder_gives_documented_topic(build: Callable[[Topics], str], expected: str, parsed: ParsedTopic) -> None:
    """Every builder gives the topic of the architecture table."""
    # Arrange
    topics = Topics()

    # Act
    topic = build(topics)

    # Assert
    assert topic == expected


@pytest.mark.parametrize(("build", "expected", "parsed"), LAYOUT, ids=LAYOUT_IDS)
def test_parse_round_trips_every_builder(build: Callable[[Topics], str], expected: str, parsed: ParsedTopic) -> None:
    """parse() takes every built topic apart into its channel and fields."""
    # Arrange
    topics = Topics()

    # Act
    result = topics.parse(build(topics))

    # Assert
    assert result == parsed
    assert rebuild(topics, result) == expected


@pytest.mark.parametrize(("build", "expected", "parsed"), LAYOUT, ids=LAYOUT_IDS)
def test_custom_prefix_is_used_and_parsed(build: Callable[[Topics], str], expected: str, parsed: ParsedTopic) -> None:
    """A multi-level prefix replaces `fl` in every topic and parse() understands it."""
    # Arrange
    topics = Topics("site-a/fl")

    # Act
    topic = build(topics)

    # Assert
    assert topic == "site-a/" + expected
    assert topics.parse(topic) == parsed


def test_parsed_job_property() -> None:
    """ParsedTopic.job gives the job of a job topic and refuses other topics."""
    # Arrange
    topics = Topics()

    # Act
    job = topics.parse(topics.ack(JOB, 1, "edge1")).job
    node = topics.parse(topics.node_status("edge1"))
    dataset = topics.parse(topics.spec(Kind.DATASET, "d1"))

    # Assert
    assert job == JOB
    with pytest.raises(TopicError, match="not a job topic"):
        _ = node.job
    with pytest.raises(TopicError, match="not a job topic"):
        _ = dataset.job


def test_kind_names() -> None:
    """Kind maps plural topic names to document kinds and back."""
    # Arrange
    kinds = list(Kind)

    # Act
    names = [(k.value, k.kind, Kind.from_kind(k.kind)) for k in kinds]

    # Assert
    assert names == [
        ("datasets", "Dataset", Kind.DATASET),
        ("models", "Model", Kind.MODEL),
        ("federatedlearningjobs", "FederatedLearningJob", Kind.JOB),
    ]
    with pytest.raises(KeyError):
        Kind.from_kind("Job")


# -- invalid parts -----------------------------------------------------------------------------

BAD_NAMES = [
    "",
    "Edge1",
    "edge_1",
    "edge 1",
    "-edge1",
    "edge1-",
    ".edge1",
    "edge/1",
    "+",
    "#",
    "edge1\n",
    "\u00e9dge1",
    "a" * 254,
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_names_raise_topic_error(name: str) -> None:
    """Every builder refuses a name that is not an RFC 1123 name."""
    # Arrange
    topics = Topics()
    builders: list[Callable[[], str]] = [
        lambda: topics.spec(Kind.DATASET, name),
        lambda: topics.status(Kind.MODEL, name),
        lambda: topics.plan(name),
        lambda: topics.worker_status(name, "edge1"),
        lambda: topics.worker_status(JOB, name),
        lambda: topics.global_manifest(name, 1),
        lambda: topics.update_manifest(JOB, 1, name, TRANSFER),
        lambda: topics.ack(JOB, 1, name),
        lambda: topics.node_status(name),
        lambda: topics.job_tree(name),
        lambda: topics.acks_for(name),
    ]

    # Act
    raised = []
    for build in builders:
        with pytest.raises(TopicError) as info:
            build()
        raised.append(info.value)

    # Assert
    assert all(err.topic == name and "is not a valid name" in err.reason for err in raised)


def test_longest_valid_name_is_accepted() -> None:
    """A 253-character name is valid (the RFC 1123 subdomain limit)."""
    # Arrange
    name = "a" * 253

    # Act
    topic = Topics().node_status(name)

    # Assert
    assert topic == f"fl/nodes/{name}/status"
    assert check_name(name) == name


@pytest.mark.parametrize("round_", [-1, True, 1.0, "1"], ids=repr)
def test_invalid_round_raises_topic_error(round_: Any) -> None:
    """A round that is negative or not an integer is refused."""
    # Arrange
    topics = Topics()

    # Act
    with pytest.raises(TopicError) as info:
        topics.global_manifest(JOB, round_)

    # Assert
    assert "round must be" in info.value.reason


@pytest.mark.parametrize("index", [-1, False, 0.5], ids=repr)
def test_invalid_chunk_index_raises_topic_error(index: Any) -> None:
    """A chunk index that is negative or not an integer is refused."""
    # Arrange
    topics = Topics()

    # Act
    with pytest.raises(TopicError) as info:
        topics.global_chunk(JOB, 1, index)

    # Assert
    assert "chunk index must be" in info.value.reason


@pytest.mark.parametrize(
    "transfer", ["", "0123abc", "0123ABCD", "0123abcg", "a" * 65, "0123abcd\n", "0123abcd/x", "+"], ids=repr
)
def test_invalid_transfer_id_raises_topic_error(transfer: str) -> None:
    """A transfer id that is not 8-64 lowercase hex digits is refused."""
    # Arrange
    topics = Topics()

    # Act
    with pytest.raises(TopicError) as info:
        topics.update_chunk(JOB, 1, "edge1", transfer, 0)

    # Assert
    assert info.value.reason == "transfer id must be 8-64 lowercase hex digits"


@pytest.mark.parametrize("client_id", ["", "a/b", "a+b", "a#", "a b", "x" * 129, "edge1\n"], ids=repr)
def test_invalid_client_id_raises_topic_error(client_id: str) -> None:
    """A sync client id with MQTT separators, wildcards or spaces is refused."""
    # Arrange
    topics = Topics()

    # Act
    with pytest.raises(TopicError) as info:
        topics.sync(client_id)

    # Assert
    assert "client id must be" in info.value.reason


@pytest.mark.parametrize("prefix", ["", "/", "fl/", "/fl", "a//b", "fl/+", "#", "f+l"], ids=repr)
def test_invalid_prefix_raises_topic_error(prefix: str) -> None:
    """A prefix with an empty level or a wildcard is refused."""
    # Arrange
    make = Topics

    # Act
    with pytest.raises(TopicError) as info:
        make(prefix)

    # Assert
    assert info.value.reason == "prefix must be non-empty levels without '+' or '#'"


@pytest.mark.parametrize(
    "topic",
    [
        "other/datasets/d1/spec",
        "fla/datasets/d1/spec",
        "f/datasets/d1/spec",
        "datasets/d1/spec",
        "",
        "/fl/nodes/e/status",
    ],
)
def test_foreign_prefix_raises_topic_error(topic: str) -> None:
    """A topic outside the prefix is refused, naming the prefix."""
    # Arrange
    topics = Topics()

    # Act
    with pytest.raises(TopicError) as info:
        topics.parse(topic)

    # Assert
    assert info.value.topic == topic
    assert info.value.reason == "not under prefix 'fl'"


def test_parse_refuses_shorter_prefix_of_a_multilevel_prefix() -> None:
    """With prefix site-a/fl, a plain fl/... topic is foreign."""
    # Arrange
    topics = Topics("site-a/fl")

    # Act
    with pytest.raises(TopicError) as info:
        topics.parse("fl/nodes/edge1/status")

    # Assert
    assert "not under prefix 'site-a/fl'" in str(info.value)


UNKNOWN_LAYOUTS = [
    "fl",
    "fl/",
    "fl/datasets",
    "fl/datasets/d1",
    "fl/datasets/d1/plan",
    "fl/models/m1/workers/edge1/status",
    "fl/widgets/w1/spec",
    "fl/Datasets/d1/spec",
    "fl/datasets/D1/spec",
    "fl/datasets/+/spec",
    "fl/datasets/d1/spec/extra",
    "fl/datasets/d1/spec/",
    f"{JOBS}/workers/edge1",
    f"{JOBS}/workers/Edge1/status",
    f"{JOBS}/rounds/1",
    f"{JOBS}/rounds/1/global",
    f"{JOBS}/rounds/1/global/chunks",
    f"{JOBS}/rounds/1/global/chunks/x",
    f"{JOBS}/rounds/1/global/chunks/-1",
    f"{JOBS}/rounds/1/global/other",
    f"{JOBS}/rounds/x/global/manifest",
    f"{JOBS}/rounds/-1/global/manifest",
    f"{JOBS}/rounds/01/global/manifest",
    f"{JOBS}/rounds/+1/global/manifest",
    f"{JOBS}/rounds/\u0661/global/manifest",
    f"{JOBS}/rounds/\u00b2/global/manifest",
    f"{JOBS}/rounds/1/acks",
    f"{JOBS}/rounds/1/acks/edge_1",
    f"{JOBS}/rounds/1/updates/edge1/{TRANSFER}",
    f"{JOBS}/rounds/1/updates/edge1/nothex00/manifest",
    f"{JOBS}/rounds/1/updates/edge1/{TRANSFER}/chunks/007",
    f"{JOBS}/rounds/1/updates/edge1/{TRANSFER}/other",
    f"{JOBS}/rounds/1/other/edge1",
    "fl/nodes/edge1",
    "fl/nodes/Edge1/status",
    "fl/nodes/edge1/status/x",
    "fl/clients//sync",
    "fl/clients/a+b/sync",
    "fl/clients/edge1/other",
]


@pytest.mark.parametrize("topic", UNKNOWN_LAYOUTS, ids=repr)
def test_unknown_layout_raises_topic_error(topic: str) -> None:
    """A topic under the prefix that is not in the layout is refused with TopicError."""
    # Arrange
    topics = Topics()

    # Act
    with pytest.raises(TopicError) as info:
        topics.parse(topic)

    # Assert
    assert info.value.topic == topic
    assert "not part of the topic layout" in info.value.reason


# -- subscription filters ----------------------------------------------------------------------


def test_subscription_filters_have_documented_wildcards() -> None:
    """Every subscription filter has the documented levels and wildcards."""
    # Arrange
    t = Topics()

    # Act
    filters = {
        "all_specs": t.all_specs(),
        "all_statuses": t.all_statuses(),
        "all_plans": t.all_plans(),
        "all_events": t.all_events(),
        "all_worker_statuses": t.all_worker_statuses(),
        "all_updates": t.all_updates(),
        "all_globals": t.all_globals(),
        "job_globals": t.job_globals(JOB),
        "acks_for": t.acks_for("edge1"),
        "all_node_statuses": t.all_node_statuses(),
        "all_round_records": t.all_round_records(),
        "job_round_records": t.job_round_records(JOB),
        "job_tree": t.job_tree(JOB),
        "everything": t.everything(),
    }

    # Assert
    assert filters == {
        "all_specs": "fl/+/+/spec",
        "all_statuses": "fl/+/+/status",
        "all_plans": "fl/federatedlearningjobs/+/plan",
        "all_events": "fl/federatedlearningjobs/+/events",
        "all_worker_statuses": "fl/federatedlearningjobs/+/workers/+/status",
        "all_updates": "fl/federatedlearningjobs/+/rounds/+/updates/#",
        "all_globals": "fl/federatedlearningjobs/+/rounds/+/global/#",
        "job_globals": f"{JOBS}/rounds/+/global/#",
        "acks_for": "fl/federatedlearningjobs/+/rounds/+/acks/edge1",
        "all_node_statuses": "fl/nodes/+/status",
        "all_round_records": "fl/federatedlearningjobs/+/rounds/+/record",
        "job_round_records": f"{JOBS}/rounds/+/record",
        "job_tree": f"{JOBS}/#",
        "everything": "fl/#",
    }


def test_subscription_filters_match_exactly_their_channels() -> None:
    """Each filter matches the built topics of its channels and no others."""
    # Arrange
    t = Topics()
    built = {expected: parsed for _, expected, parsed in LAYOUT}
    built[t.ack(JOB, 3, "edge1")] = t.parse(t.ack(JOB, 3, "edge1"))
    built[t.global_manifest("other-job", 1)] = t.parse(t.global_manifest("other-job", 1))
    expectations: dict[str, Callable[[ParsedTopic], bool]] = {
        t.all_specs(): lambda p: p.channel is Channel.SPEC,
        # fl/nodes/<node>/status has the shape of fl/<kind>/<name>/status: subscribers of
        # all_statuses() get node presence too and must dispatch on parse().channel.
        t.all_statuses(): lambda p: p.channel in (Channel.STATUS, Channel.NODE_STATUS),
        t.all_plans(): lambda p: p.channel is Channel.PLAN,
        t.all_events(): lambda p: p.channel is Channel.EVENTS,
        t.all_worker_statuses(): lambda p: p.channel is Channel.WORKER_STATUS,
        t.all_updates(): lambda p: p.channel in (Channel.UPDATE_MANIFEST, Channel.UPDATE_CHUNK),
        t.all_globals(): lambda p: p.channel in (Channel.GLOBAL_MANIFEST, Channel.GLOBAL_CHUNK),
        t.job_globals(JOB): lambda p: p.channel in (Channel.GLOBAL_MANIFEST, Channel.GLOBAL_CHUNK) and p.name == JOB,
        t.acks_for("edge1"): lambda p: p.channel is Channel.ACK and p.node == "edge1",
        t.all_node_statuses(): lambda p: p.channel is Channel.NODE_STATUS,
        t.all_round_records(): lambda p: p.channel is Channel.ROUND_RECORD,
        t.job_round_records(JOB): lambda p: p.channel is Channel.ROUND_RECORD and p.name == JOB,
        t.job_tree(JOB): lambda p: p.kind is Kind.JOB and p.name == JOB,
        t.everything(): lambda p: True,
    }

    # Act
    mismatches = [
        (filter_, topic)
        for filter_, wanted in expectations.items()
        for topic, parsed in built.items()
        if matches(filter_, topic) != wanted(parsed)
    ]

    # Assert
    assert mismatches == []


def test_acl_pattern_lets_a_node_write_only_its_own_updates() -> None:
    """The documented ACL pattern with %u = edge1 covers edge1's updates and not edge2's."""
    # Arrange
    t = Topics()
    acl = "fl/federatedlearningjobs/+/rounds/+/updates/%u/#".replace("%u", "edge1")

    # Act
    own = [t.update_manifest(JOB, 1, "edge1", TRANSFER), t.update_chunk(JOB, 1, "edge1", TRANSFER, 4)]
    other = [t.update_manifest(JOB, 1, "edge2", TRANSFER), t.update_chunk(JOB, 1, "edge2", TRANSFER, 4)]

    # Assert
    assert all(matches(acl, topic) for topic in own)
    assert not any(matches(acl, topic) for topic in other)


def test_one_node_filters_have_documented_levels() -> None:
    """updates_of and client_tree name one node's (client's) level and end in the multi-level wildcard."""
    # Arrange
    t = Topics()

    # Act
    filters = {"updates_of": t.updates_of("edge1"), "client_tree": t.client_tree("flctl-ann-42")}

    # Assert
    assert filters == {
        "updates_of": "fl/federatedlearningjobs/+/rounds/+/updates/edge1/#",
        "client_tree": "fl/clients/flctl-ann-42/#",
    }


def test_one_node_filters_match_exactly_that_nodes_topics() -> None:
    """updates_of(edge1) matches edge1's update manifests and chunks only; client_tree its sync topic only."""
    # Arrange
    t = Topics()
    own = [t.update_manifest(JOB, 1, "edge1", TRANSFER), t.update_chunk(JOB, 7, "edge1", TRANSFER, 4)]
    others = [
        t.update_manifest(JOB, 1, "edge2", TRANSFER),
        t.ack(JOB, 1, "edge1"),
        t.worker_status(JOB, "edge1"),
        t.sync("edge1"),
    ]

    # Act
    updates = t.updates_of("edge1")

    # Assert
    assert all(matches(updates, topic) for topic in own)
    assert not any(matches(updates, topic) for topic in others)
    assert matches(t.client_tree("edge1"), t.sync("edge1"))
    assert not matches(t.client_tree("edge1"), t.sync("edge2"))


#: Every builder of one node's (or client's) topic or filter: the ones an ACL `pattern` line needs.
ONE_NODE_BUILDERS: list[Callable[[Topics, Any], str]] = [
    Topics.updates_of,
    Topics.worker_statuses_of,
    Topics.node_status,
    Topics.acks_for,
    Topics.client_tree,
]


def test_acl_pattern_stands_for_the_node_level() -> None:
    """With AclPattern.USERNAME the one-node builders write the broker's `%u` pattern lines."""
    # Arrange
    t = Topics("org/fl")

    # Act
    patterns = [build(t, AclPattern.USERNAME) for build in ONE_NODE_BUILDERS]

    # Assert
    assert patterns == [
        "org/fl/federatedlearningjobs/+/rounds/+/updates/%u/#",
        "org/fl/federatedlearningjobs/+/workers/%u/status",
        "org/fl/nodes/%u/status",
        "org/fl/federatedlearningjobs/+/rounds/+/acks/%u",
        "org/fl/clients/%u/#",
    ]


def test_acl_pattern_with_the_username_covers_exactly_that_nodes_topics() -> None:
    """Each `%u` pattern, read as the broker does for user edge1, matches edge1's topics and not edge2's."""
    # Arrange
    t = Topics()
    topic_of: list[Callable[[str], str]] = [
        lambda n: t.update_chunk(JOB, 2, n, TRANSFER, 0),
        lambda n: t.worker_status(JOB, n),
        t.node_status,
        lambda n: t.ack(JOB, 2, n),
        t.sync,
    ]

    # Act
    for_edge1 = [build(t, AclPattern.USERNAME).replace("%u", "edge1") for build in ONE_NODE_BUILDERS]

    # Assert
    assert all(matches(acl, topic("edge1")) for acl, topic in zip(for_edge1, topic_of, strict=True))
    assert not any(matches(acl, topic("edge2")) for acl, topic in zip(for_edge1, topic_of, strict=True))


@pytest.mark.parametrize("placeholder", ["%u", "%c", "+", "#"])
@pytest.mark.parametrize("build", ONE_NODE_BUILDERS, ids=lambda build: build.__name__)
def test_acl_placeholder_as_a_string_is_refused(build: Callable[[Topics, Any], str], placeholder: str) -> None:
    """Only the explicit AclPattern stands for a level: the same text as a name is an invalid name."""
    with pytest.raises(TopicError) as info:
        build(Topics(), placeholder)

    assert info.value.topic == placeholder


# -- properties --------------------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,40}[a-z0-9])?", fullmatch=True)
rounds = st.integers(min_value=0, max_value=10**9)
indices = st.integers(min_value=0, max_value=10**6)
transfers = st.from_regex(r"[0-9a-f]{8,64}", fullmatch=True)
client_ids = st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True)
prefixes = st.lists(st.from_regex(r"[A-Za-z0-9_$-][A-Za-z0-9_.$-]{0,8}", fullmatch=True), min_size=1, max_size=3).map(
    "/".join
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(
    prefix=prefixes,
    kind=st.sampled_from(Kind),
    job=names,
    node=names,
    round_=rounds,
    transfer=transfers,
    index=indices,
    client=client_ids,
)
def test_any_valid_parts_round_trip(
    *, prefix: str, kind: Kind, job: str, node: str, round_: int, transfer: str, index: int, client: str
) -> None:
    """Any valid names, rounds, transfer ids and indices survive build + parse."""
    # Arrange
    t = Topics(prefix)
    cases = [
        (t.spec(kind, job), ParsedTopic(Channel.SPEC, kind, job)),
        (t.status(kind, job), ParsedTopic(Channel.STATUS, kind, job)),
        (t.plan(job), ParsedTopic(Channel.PLAN, Kind.JOB, job)),
        (t.worker_status(job, node), ParsedTopic(Channel.WORKER_STATUS, Kind.JOB, job, node=node)),
        (t.global_manifest(job, round_), ParsedTopic(Channel.GLOBAL_MANIFEST, Kind.JOB, job, round_)),
        (t.global_chunk(job, round_, index), ParsedTopic(Channel.GLOBAL_CHUNK, Kind.JOB, job, round_, chunk=index)),
        (
            t.update_manifest(job, round_, node, transfer),
            ParsedTopic(Channel.UPDATE_MANIFEST, Kind.JOB, job, round_, node, transfer),
        ),
        (
            t.update_chunk(job, round_, node, transfer, index),
            ParsedTopic(Channel.UPDATE_CHUNK, Kind.JOB, job, round_, node, transfer, index),
        ),
        (t.ack(job, round_, node), ParsedTopic(Channel.ACK, Kind.JOB, job, round_, node=node)),
        (t.node_status(node), ParsedTopic(Channel.NODE_STATUS, node=node)),
        (t.sync(client), ParsedTopic(Channel.SYNC, name=client)),
    ]

    # Act
    parsed = [t.parse(topic) for topic, _ in cases]

    # Assert
    assert parsed == [expected for _, expected in cases]
    assert all(topic.startswith(prefix + "/") for topic, _ in cases)


@SETTINGS
@given(name=st.text(max_size=30).filter(lambda s: not (check_name_ok(s))))
def test_any_invalid_name_is_refused(name: str) -> None:
    """Any string that is not an RFC 1123 name is refused by the builders."""
    # Arrange
    t = Topics()

    # Act
    with pytest.raises(TopicError) as info:
        t.worker_status(JOB, name)

    # Assert
    assert info.value.topic == name


def check_name_ok(value: str) -> bool:
    try:
        check_name(value)
    except ValueError:
        return False
    return True


levels = st.one_of(
    st.sampled_from(
        [
            "fl",
            "datasets",
            "models",
            "federatedlearningjobs",
            "nodes",
            "clients",
            "spec",
            "status",
            "plan",
            "workers",
            "rounds",
            "global",
            "updates",
            "acks",
            "chunks",
            "manifest",
            "sync",
            "edge1",
            "0",
            "7",
            "01",
            TRANSFER,
            "",
            "+",
            "#",
        ]
    ),
    st.text(max_size=6),
)


@SETTINGS
@given(rest=st.lists(levels, max_size=9))
def test_parse_is_the_inverse_of_build(rest: list[str]) -> None:
    """parse() of any topic either raises TopicError or gives parts that rebuild the same topic."""
    # Arrange
    t = Topics()
    topic = "/".join(["fl", *rest])

    # Act
    try:
        parsed = t.parse(topic)
    except TopicError:
        return

    # Assert
    assert rebuild(t, parsed) == topic


@SETTINGS
@given(
    topic=st.sampled_from([expected for _, expected, _ in LAYOUT]),
    data=st.data(),
)
def test_one_changed_level_parses_canonically_or_raises(topic: str, data: st.DataObject) -> None:
    """Changing one level of a valid topic gives TopicError or a topic that rebuilds identically."""
    # Arrange
    t = Topics()
    topic_levels = topic.split("/")
    index = data.draw(st.integers(1, len(topic_levels) - 1), label="index")
    topic_levels[index] = data.draw(
        st.one_of(levels, st.from_regex(r"[0-9\u0660-\u0669+-]{1,3}", fullmatch=True)), label="level"
    )
    changed = "/".join(topic_levels)

    # Act
    try:
        parsed = t.parse(changed)
    except TopicError:
        return

    # Assert
    assert rebuild(t, parsed) == changed
