"""A site's identity on the cloud broker: the bridge user `site-<site>` in CLOUD/broker/passwd and an ACL block
naming exactly the site's edges in CLOUD/broker/acl (the cloud broker re-reads both on SIGHUP).

On the cloud broker the whole site is one MQTT user, so the `%u` patterns cannot key on its edges: the
block lists each edge's topics by name, the same topics an edge may use on its own broker. The block sits
between `# BEGIN site <site>` and `# END site <site>` lines, so provisioning the site again replaces it,
and its BEGIN line lists the edges, so a second site (or the cloud) cannot claim one of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from flctl._errors import InputError
from flctl.provision._files import SECRET
from flctl.provision._passwd import hash_password
from schemas import Topics

_BEGIN = re.compile(r"^# BEGIN site (?P<site>\S+) edges: (?P<edges>\S*)$")


def bridge_user(site: str) -> str:
    """The site bridge's username (and client id) on the cloud broker."""
    return f"site-{site}"


def site_acl_block(t: Topics, site: str, edges: Sequence[str]) -> str:
    """The cloud ACL block of site `site`'s bridge user: write the edges' own topics, read what they read,
    write the bridge's notification topic (its "1", and the last will "0")."""
    user = bridge_user(site)
    lines = [
        f"# BEGIN site {site} edges: {','.join(edges)}",
        f"# {user}: the bridge of site {site} (`flctl site add`): its edges' topics, named, and nothing more.",
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
    lines.append(f"# END site {site}")
    return "\n".join(lines) + "\n"


def _replace_atomically(path: Path, text: str) -> None:
    """Write `path` through a 0600 temporary file and a rename: a broker reloading meanwhile reads the old
    file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, SECRET)
    try:
        os.fchmod(fd, SECRET)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _without_block(acl: str, site: str) -> tuple[str, dict[str, list[str]]]:
    """The ACL text without site `site`'s block, and every other site's edges (site -> edges)."""
    kept: list[str] = []
    others: dict[str, list[str]] = {}
    skipping = False
    for line in acl.splitlines(keepends=True):
        begin = _BEGIN.match(line.rstrip("\n"))
        if begin:
            if begin["site"] == site:
                skipping = True
                continue
            others[begin["site"]] = [e for e in begin["edges"].split(",") if e]
        if skipping:
            skipping = line.rstrip("\n") != f"# END site {site}"
            continue
        kept.append(line)
    return "".join(kept), others


def install_site_on_cloud(
    cloud_dir: Path, site: str, edges: Sequence[str], password: str, block: str
) -> tuple[Path, Path]:
    """Add (or replace) site `site`'s bridge user and ACL block in `cloud_dir`/broker; returns (passwd, acl).

    InputError when the files are missing, or an edge is already an identity of the cloud broker or of
    another site (node names are unique across all sites)."""
    passwd = cloud_dir / "broker" / "passwd"
    acl = cloud_dir / "broker" / "acl"
    try:
        passwd_lines = passwd.read_text().splitlines()
        acl_text = acl.read_text()
    except OSError as exc:
        raise InputError(f"--cloud-dir {cloud_dir}: cannot read broker/passwd and broker/acl: {exc}") from exc
    user = bridge_user(site)
    users = {line.split(":", 1)[0] for line in passwd_lines if ":" in line}
    rest, others = _without_block(acl_text, site)
    taken = [e for e in edges if e in users]
    if taken:
        raise InputError(
            f"--nodes {', '.join(taken)}: already an identity of the cloud broker ({passwd}); node names are "
            "unique across the cloud and every site"
        )
    for other, their_edges in others.items():
        taken = [e for e in edges if e in their_edges]
        if taken:
            raise InputError(f"--nodes {', '.join(taken)}: already an edge of site {other} ({acl})")
    if user in users and len(rest) == len(acl_text):
        raise InputError(f"{user} is already a user of the cloud broker ({passwd}) but not a site's bridge")
    entry = f"{user}:{hash_password(password)}"
    new_passwd = [line for line in passwd_lines if line.split(":", 1)[0] != user] + [entry]
    _replace_atomically(passwd, "\n".join(new_passwd) + "\n")
    _replace_atomically(acl, rest.rstrip("\n") + "\n\n" + block)
    return passwd, acl
