"""A site's identity on the cloud broker: the bridge user `site-<site>` in CLOUD/broker/passwd and an ACL block
naming exactly the site's edges in CLOUD/broker/acl (the cloud broker re-reads both on SIGHUP).

On the cloud broker the whole site is one MQTT user, so the `%u` patterns cannot key on its edges: the
block lists each edge's topics by name, the same topics an edge may use on its own broker. The block has
the shape of every `user` block of the ACL (`flctl node` edits them with the same helpers: a comment line
`# <user>: ...`, the `user` line, its topics, a blank line); its comment line ends with `edges: e1,e2`, so
provisioning the site again replaces it and another site (or the cloud) cannot claim one of its edges.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from flctl._errors import InputError
from flctl.provision._files import SECRET
from flctl.provision._fleet_files import acl_insert, acl_remove, passwd_set, passwd_users, write_atomic
from flctl.provision._passwd import hash_password
from schemas import Topics

_SITE_COMMENT = re.compile(r"^# site-(?P<site>\S+): the bridge of site (?P=site)\b.* edges: (?P<edges>\S*)$")


def bridge_user(site: str) -> str:
    """The site bridge's username (and client id) on the cloud broker."""
    return f"site-{site}"


def site_acl_block(t: Topics, site: str, edges: Sequence[str]) -> list[str]:
    """The cloud ACL block of site `site`'s bridge user: write the edges' own topics, read what they read,
    write the bridge's notification topic (its "1", and the last will "0")."""
    user = bridge_user(site)
    lines = [
        f"# {user}: the bridge of site {site} (`flctl site add`), its edges' topics by name; edges: {','.join(edges)}",
        f"user {user}",
        f"topic write {t.site_bridge(site)}",
        f"topic read {t.all_plans()}",
        f"topic read {t.all_globals()}",
        f"topic read {t.all_secagg_states()}",
        f"topic read {t.all_secagg_shares()}",
    ]
    for edge in edges:
        lines += [
            f"topic write {t.updates_of(edge)}",
            f"topic write {t.worker_statuses_of(edge)}",
            f"topic write {t.node_status(edge)}",
            *(f"topic write {t.secagg_writes(step, edge)}" for step in ("keys", "shares", "unmask")),
            f"topic read {t.acks_for(edge)}",
        ]
    return [*lines, ""]


def site_edges(acl: str) -> dict[str, list[str]]:
    """Every site's edges, as the ACL's site blocks name them (site -> edges)."""
    found = (_SITE_COMMENT.match(line) for line in acl.splitlines())
    return {m["site"]: [e for e in m["edges"].split(",") if e] for m in found if m}


def install_site_on_cloud(
    cloud_dir: Path, site: str, edges: Sequence[str], password: str | None, block: list[str]
) -> tuple[Path, Path]:
    """Add (or replace) site `site`'s bridge user and ACL block in `cloud_dir`/broker; returns (passwd, acl).
    `password` None keeps the bridge user's password line as it is (it must exist).

    InputError when the files are missing, or an edge is already an identity of the cloud broker or of
    another site (node names are unique across all sites)."""
    passwd = cloud_dir / "broker" / "passwd"
    acl = cloud_dir / "broker" / "acl"
    try:
        passwd_text = passwd.read_text()
        acl_text = acl.read_text()
    except OSError as exc:
        raise InputError(f"--cloud-dir {cloud_dir}: cannot read broker/passwd and broker/acl: {exc}") from exc
    user = bridge_user(site)
    users = passwd_users(passwd_text)
    taken = [e for e in edges if e in users]
    if taken:
        raise InputError(
            f"--nodes {', '.join(taken)}: already an identity of the cloud broker ({passwd}); node names are "
            "unique across the cloud and every site"
        )
    sites = site_edges(acl_text)
    for other, their_edges in sites.items():
        taken = [e for e in edges if e in their_edges and other != site]
        if taken:
            raise InputError(f"--nodes {', '.join(taken)}: already an edge of site {other} ({acl})")
    if user in users and site not in sites:
        raise InputError(f"{user} is already a user of the cloud broker ({passwd}) but not a site's bridge")
    if password is None:
        if user not in users:
            raise InputError(f"site {site} has no bridge user {user} in {passwd}: add the site first (flctl site add)")
    else:
        write_atomic(passwd, passwd_set(passwd_text, user, hash_password(password)), SECRET)
    write_atomic(acl, acl_insert(acl_remove(acl_text, user), block), SECRET)
    return passwd, acl
