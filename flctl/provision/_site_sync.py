"""`flctl site sync`: after edges were added to or removed from a site (`flctl node add NAME --role edge --site
SITE -d SITE_DIR`, `flctl node remove`), make the site's bridge and its block on the cloud broker name exactly
the site's edges again.

The edges are the site folder's node configs (DIR/nodes/*/node.yaml, role edge, `site: SITE`; a site
aggregator's, role aggregator, is bridged the same way). The bridge's
`topic` lines in DIR/broker/mosquitto.conf are rewritten (the rest of the file, the bridge password
included, stays), and the cloud ACL's `site-<SITE>` block is replaced; the bridge's password line on the
cloud is kept. The cloud broker reads the ACL on SIGHUP; the site broker must be restarted, because
Mosquitto does not reload bridges on SIGHUP (its persistence keeps sessions and queues across the restart).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker import load_node_config
from broker.mosquitto import render_bridge_topics
from flctl._errors import InputError, UsageError
from flctl.provision._cloud_site import install_site_on_cloud, site_acl_block
from flctl.provision._files import SECRET
from flctl.provision._fleet_files import write_atomic
from flctl.provision._site import bridge_topics
from schemas import Topics, check_name


@dataclass(frozen=True)
class SiteSynced:
    """What `sync_site` wrote (no secret)."""

    site: str
    edges: list[str]
    conf_path: Path
    cloud_acl: Path


def _site_nodes(site_dir: Path, site: str) -> list[str]:
    """The site's bridged nodes: its edges, then any site aggregators (hierarchical jobs), whose own topics
    cross the bridge exactly like an edge's."""
    found: dict[str, list[str]] = {"edge": [], "aggregator": []}
    for file in sorted(site_dir.glob("nodes/*/node.yaml")):
        try:
            cfg = load_node_config(file)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
        if cfg.role in found:
            if cfg.site != site:
                raise InputError(f"{file}: a node of site {cfg.site!r}, not of {site}: is --site-dir site {site}'s?")
            found[cfg.role].append(cfg.node)
    if not found["edge"]:
        raise InputError(f"--site-dir {site_dir}: no edge's node.yaml under nodes/ (a site needs at least one edge)")
    return [*found["edge"], *found["aggregator"]]


def _with_topics(conf: str, topics: list[str], path: Path) -> str:
    """`conf` with the bridge section's topic lines (and their two comment lines) replaced by `topics`."""
    lines = conf.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("connection ")]
    if len(starts) != 1:
        raise InputError(f"{path}: expected exactly one bridge (`connection` section), found {len(starts)}")
    head, section = lines[: starts[0]], lines[starts[0] :]
    comments = ("# site -> cloud:", "# cloud -> site:")
    kept = [line for line in section if not line.startswith(("topic ", *comments))]
    return "\n".join([*head, *kept, *topics]) + "\n"


def sync_site(site_dir: Path, site: str, *, cloud_dir: Path, prefix: str = "fl") -> SiteSynced:
    """Rewrite site `site`'s bridge topics (in `site_dir`) and cloud ACL block (in `cloud_dir`) for the
    edges whose configs `site_dir` holds. InputError naming the file when something does not fit."""
    try:
        check_name(site, "site")
        t = Topics(prefix)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    site_dir = site_dir.absolute()
    conf_path = site_dir / "broker" / "mosquitto.conf"
    try:
        conf = conf_path.read_text()
    except OSError as exc:
        raise InputError(f"--site-dir {site_dir}: cannot read broker/mosquitto.conf ({exc.strerror})") from exc
    edges = _site_nodes(site_dir, site)
    new_conf = _with_topics(conf, render_bridge_topics(bridge_topics(t, edges)), conf_path)
    # The cloud first: it refuses an edge that is also the cloud's or another site's, before the site changes.
    _, acl = install_site_on_cloud(cloud_dir.absolute(), site, edges, None, site_acl_block(t, site, edges))
    write_atomic(conf_path, new_conf, SECRET)
    return SiteSynced(site, edges, conf_path, acl)
