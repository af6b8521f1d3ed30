"""The broker's ACL file, every topic in it built by `schemas.Topics` (`%u` through `AclPattern`).

Roles: admin (writes specs; reads statuses and per-round records; asks nodes for logs and ledgers), viewer (flctl get/describe, read-only), monitor ($SYS and statuses,
read-only), aggregator (everything under the prefix), edge (the `pattern` lines: its own topics only).
The job event streams are read by the admins, viewers and monitors, written by the aggregators only; an
edge has no line for them, so it can neither read another job's (or edge's) events nor forge one.

Requests to a node service (`flctl logs`, `flctl audit`) are written only by admins, each under its own
name (``fl/nodes/+/requests/<admin>``); a node reads the requests to itself and writes only its own
replies (``fl/nodes/%u/replies/+``); everyone reads only the replies to itself. Viewers and monitors
cannot ask: a worker's log is its script's free-form output (file names, sample lines, values in a
traceback), more than the bounded status documents a read-only identity is for, and an admin, who
decides which scripts run, learns nothing from it it could not already arrange to learn.

Mosquitto applies `pattern` lines to every user, so on their own they would let a viewer or a monitor
write "its own" node status, worker statuses and updates. Mosquitto 2.0 checks a user's own lines
first and a matching `topic deny` ends the check, before any pattern is looked at: so each read-only
identity gets a `deny` for the topics the patterns would let it write (they name only itself, so no
read it needs is lost) and for the global models. Admins and read-only identities also get a `deny` for
secure aggregation's topics (``rounds/+/secagg/#``): they are no party to a round.
"""

from __future__ import annotations

from collections.abc import Iterable

from schemas import AclPattern, Topics

# The broker's own statistics: not part of our topic layout, read by the monitor and aggregator identities.
SYS_TOPICS = "$SYS/#"


def _user(name: str, comment: str, grants: list[str]) -> list[str]:
    return [f"# {name}: {comment}", f"user {name}", *grants, ""]


def _edge_patterns(t: Topics, own: str | AclPattern) -> list[tuple[str, str]]:
    """(access, topic) of what every edge may do on its own topics; `own` is %u or one user's name."""
    return [
        ("write", t.updates_of(own)),
        ("write", t.worker_statuses_of(own)),
        ("read", t.worker_statuses_of(own)),
        ("write", t.node_status(own)),
        ("read", t.node_status(own)),
        ("read", t.all_plans()),
        ("read", t.all_globals()),
        ("read", t.acks_for(own)),
        ("readwrite", t.client_tree(own)),
        ("read", t.requests_to(own)),
        ("write", t.replies_of(own)),
        ("read", t.replies_to(own)),
        # Secure aggregation: its own keys, share bundle and unmask answer; the rounds' states (the roster
        # carries everyone's public keys) and every bundle (each entry is sealed for one receiver). Never
        # another edge's keys or answers: the answers hold plaintext shares.
        ("write", t.secagg_writes("keys", own)),
        ("write", t.secagg_writes("shares", own)),
        ("write", t.secagg_writes("unmask", own)),
        ("read", t.all_secagg_states()),
        ("read", t.all_secagg_shares()),
    ]


def _read_only_denials(t: Topics, name: str) -> list[str]:
    """`topic deny` for every topic the patterns would let `name` write, and for the global models (a
    trained model is the job's product, not something to look at). Its client tree stays: flctl's read
    barrier publishes there, and only `name` itself reads it."""
    written = [topic for access, topic in _edge_patterns(t, name) if "write" in access]
    # (Secure aggregation's own topics are covered by the one denial of them all.)
    denied = [topic for topic in dict.fromkeys(written) if topic != t.client_tree(name) and "/secagg/" not in topic] + [
        t.all_globals()
    ]
    return [f"topic deny {topic}" for topic in denied] + [_secagg_denial(t)]


def _secagg_denial(t: Topics) -> str:
    """Secure aggregation's messages are for the round's parties: the patterns would let anyone read the
    states and bundles; admins and read-only identities are not parties."""
    return f"topic deny {t.all_secagg()}"


def render_acl(
    aggregators: Iterable[str],
    admins: Iterable[str],
    prefix: str = "fl",
    *,
    viewers: Iterable[str] = (),
    monitors: Iterable[str] = (),
) -> str:
    """The ACL file: admins write specs and read statuses, round records and job events; viewers read
    specs, statuses, round records and job events; monitors read `$SYS`, statuses and job events;
    aggregators everything under the prefix; each node (any user: `pattern`)
    only its own updates, worker status, node status, acks and sync topic."""
    t = Topics(prefix)
    lines = [
        "# ACL for the federated-learning broker (written by `flctl broker init`). Keyed on the username;",
        "# use_username_as_clientid is on, so the client id is the username too. Reloaded on SIGHUP.",
        "# No `topic` line comes before the first `user` line: anonymous clients get nothing.",
        "",
    ]
    for admin in admins:
        lines += _user(
            admin,
            "the job publisher (flctl): writes resource specs, reads statuses and job events.",
            [
                f"topic readwrite {t.all_specs()}",
                f"topic read {t.all_statuses()}",
                f"topic read {t.all_round_records()}",
                f"topic read {t.all_node_statuses()}",
                f"topic read {t.all_events()}",
                f"topic read {t.all_site_bridges()}",
                # flctl logs / audit: requests to any node, under this admin's own name only
                f"topic write {t.requests_from(admin)}",
                _secagg_denial(t),
            ],
        )
    for viewer in viewers:
        lines += _user(
            viewer,
            "read-only flctl (get, describe, -w): reads specs, statuses and job events, writes nothing.",
            [
                f"topic read {t.all_specs()}",
                f"topic read {t.all_statuses()}",
                f"topic read {t.all_round_records()}",
                f"topic read {t.all_node_statuses()}",
                f"topic read {t.all_events()}",
                f"topic read {t.all_site_bridges()}",
                *_read_only_denials(t, viewer),
            ],
        )
    for monitor in monitors:
        lines += _user(
            monitor,
            "monitoring (mosquitto_sub, exporters): reads the broker's $SYS counters, statuses and job events, "
            "writes nothing.",
            [
                f"topic read {SYS_TOPICS}",
                f"topic read {t.all_statuses()}",
                f"topic read {t.all_node_statuses()}",
                f"topic read {t.all_events()}",
                # whether each site's bridge is up (`flctl site add`)
                f"topic read {t.all_site_bridges()}",
                *_read_only_denials(t, monitor),
            ],
        )
    for agg in aggregators:
        lines += _user(
            agg,
            "controller and aggregator: reads updates, writes plans, global models and statuses.",
            [f"topic readwrite {t.everything()}", f"topic read {SYS_TOPICS}"],
        )
    lines.append("# Every user (edges, and harmlessly the admins and aggregators): only its own topics.")
    lines += [f"pattern {access} {topic}" for access, topic in _edge_patterns(t, AclPattern.USERNAME)]
    return "\n".join(lines) + "\n"
