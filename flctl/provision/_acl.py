"""The broker's ACL file, every topic in it built by `schemas.Topics` (`%u` through `AclPattern`)."""

from __future__ import annotations

from collections.abc import Iterable

from schemas import AclPattern, Topics

# The broker's own statistics: not part of our topic layout, read by the aggregators' operators.
SYS_TOPICS = "$SYS/#"


def _user(name: str, comment: str, grants: list[str]) -> list[str]:
    return [f"# {name}: {comment}", f"user {name}", *grants, ""]


def render_acl(aggregators: Iterable[str], admins: Iterable[str], prefix: str = "fl") -> str:
    """The ACL file: admins write specs and read statuses, aggregators everything under the prefix, each
    node (any user: `pattern`) only its own updates, worker status, node status, acks and sync topic."""
    t = Topics(prefix)
    own = AclPattern.USERNAME
    lines = [
        "# ACL for the federated-learning broker (written by `flctl broker init`). Keyed on the username;",
        "# use_username_as_clientid is on, so the client id is the username too. Reloaded on SIGHUP.",
        "# No `topic` line comes before the first `user` line: anonymous clients get nothing.",
        "",
    ]
    for admin in admins:
        lines += _user(
            admin,
            "the job publisher (flctl): writes resource specs, reads statuses.",
            [
                f"topic readwrite {t.all_specs()}",
                f"topic read {t.all_statuses()}",
                f"topic read {t.all_node_statuses()}",
            ],
        )
    for agg in aggregators:
        lines += _user(
            agg,
            "controller and aggregator: reads updates, writes plans, global models and statuses.",
            [f"topic readwrite {t.everything()}", f"topic read {SYS_TOPICS}"],
        )
    lines += [
        "# Every user (edges, and harmlessly the users above): only its own topics.",
        f"pattern write {t.updates_of(own)}",
        f"pattern write {t.worker_statuses_of(own)}",
        f"pattern read {t.worker_statuses_of(own)}",
        f"pattern write {t.node_status(own)}",
        f"pattern read {t.node_status(own)}",
        f"pattern read {t.all_plans()}",
        f"pattern read {t.all_globals()}",
        f"pattern read {t.acks_for(own)}",
        f"pattern readwrite {t.client_tree(own)}",
    ]
    return "\n".join(lines) + "\n"
