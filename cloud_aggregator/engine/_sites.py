"""Factory sites: which edges sit behind which site broker, whether each site's bridge is up, and what a job's
status says about it.

A site's edges connect to their site broker, whose bridge carries their topics to the cloud broker. When
the site's WAN link drops, the cloud broker sees no last will of those edges (they are still connected, to
their own broker): only the bridge's, `"0"` on ``fl/sites/<site>/bridge`` (Mosquitto's notification topic,
retained; `"1"` when the bridge is back). So the controller learns the membership from the edges' presence
(`NodeStatus.site`, from node.yaml) and the reachability from the bridge (`SiteMap`), and each job shows it
(`SiteView`): the job's `sites` entry turns `reachable: false` with the time, the `SitesReachable`
condition turns False naming the site and its edges, a `SiteUnreachable` Warning goes on the event stream,
and the open round's message says so. The edges' entries keep their last state: they are probably still
training, their updates queued on the site broker, and the bridge delivers them when the link returns (a
`SiteReachable` event, the condition True again). Rounds keep their rules: without a deadline a round waits,
with a deadline and a quorum it closes at the deadline. An unreachable site's edges are not taken as absent
(`offline_grace` needs a last will): their updates may well be on their way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from structlog.typing import FilteringBoundLogger

from cloud_aggregator.engine._context import JobContext
from schemas import ConditionType, NodeState, NodeStatus, SiteStatus, check_name

__all__ = ["SiteMap", "SiteView", "bridge_state"]

# What Mosquitto's bridge publishes on its notification topic (`notifications true`).
_UP, _DOWN = b"1", b"0"


def bridge_state(site: str, payload: bytes) -> bool | None:
    """Whether a site bridge's notification says up (True) or down (False); None for an empty payload (the
    retained notification cleared: the site is no longer bridged). ValueError naming the site otherwise."""
    value = payload.strip()
    if value == _UP:
        return True
    if value == _DOWN:
        return False
    if not value:
        return None
    raise ValueError(f"site {site}'s bridge notification {payload[:32]!r} is not '1' (up) or '0' (down)")


@dataclass(frozen=True)
class _Bridge:
    up: bool
    since: datetime | None  # when this process saw it change; None: as first seen (retained, at startup)


class SiteMap:
    """Controller-wide: each edge's site (from its presence) and each site bridge's state (from its notification)."""

    def __init__(self, log: FilteringBoundLogger) -> None:
        self._log = log
        self._site_of: dict[str, str] = {}
        self._bridges: dict[str, _Bridge] = {}

    def saw_node(self, status: NodeStatus) -> bool:
        """Note the site a node's presence names; True when the node moved (a job's view may change). An online
        presence says where the node is now (no site: the cloud broker); a last will without a site (it was
        fixed before the node knew one, or an older node) changes nothing."""
        site = status.site
        if site is not None:
            try:
                check_name(site, "site")
            except ValueError as exc:
                self._log.warning("node status with a bad site ignored", node=status.node, error=str(exc))
                return False
        elif status.state is NodeState.OFFLINE:
            return False
        before = self._site_of.get(status.node)
        if site is None:
            self._site_of.pop(status.node, None)
        else:
            self._site_of[status.node] = site
        return before != site

    def on_bridge(self, site: str, payload: bytes, when: datetime, *, retained: bool) -> bool:
        """A site bridge's notification; True when the site's state changed. A bad payload is logged and
        ignored (the topic and what was expected named)."""
        try:
            up = bridge_state(site, payload)
        except ValueError as exc:
            self._log.warning("site bridge notification ignored", site=site, error=str(exc))
            return False
        before = self._bridges.get(site)
        if up is None:
            return self._bridges.pop(site, None) is not None
        if before is not None and before.up is up:
            return False
        # A retained notification seen first at startup says how the bridge is, not since when.
        since = None if retained and before is None else when
        self._bridges[site] = _Bridge(up, since)
        self._log.info("site bridge", site=site, up=up)
        return True

    def statuses(self) -> list[SiteStatus]:
        """Every site with a known edge, its edges and its bridge's state (reachable unless it said "0")."""
        members: dict[str, list[str]] = {}
        for node, site in sorted(self._site_of.items()):
            members.setdefault(site, []).append(node)
        shown = []
        for site, nodes in sorted(members.items()):
            bridge = self._bridges.get(site)
            reachable = bridge is None or bridge.up
            shown.append(
                SiteStatus(name=site, reachable=reachable, since=bridge.since if bridge else None, nodes=nodes)
            )
        return shown


class SiteView:
    """One job's side: its status' `sites`, the `SitesReachable` condition and the site events."""

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx

    def show(self, sites: Iterable[SiteStatus]) -> None:
        """The sites as the controller sees them now; what changed for this job's training workers goes into
        its status (published) and on its event stream."""
        ctx = self._ctx
        if ctx.finished:
            return
        participants = set(ctx.facts.participants)
        before = {s.name: s for s in ctx.status.sites or []}
        mine: list[SiteStatus] = []
        changed = False
        for site in sites:
            nodes = [n for n in site.nodes if n in participants]
            if not nodes:
                continue
            old = before.get(site.name)
            since = site.since
            if old is not None and old.reachable is site.reachable:
                since = old.since  # unchanged: keep the time it changed (a restored status' too)
            elif old is not None or not site.reachable:
                self._said(site.name, nodes, reachable=site.reachable, since=since, old=old)
            entry = SiteStatus(name=site.name, reachable=site.reachable, since=since, nodes=nodes)
            changed = changed or old != entry
            mine.append(entry)
        changed = changed or len(mine) != len(before)
        if not changed:
            return
        ctx.status.sites = mine or None
        self._condition(mine)
        ctx.publish()

    def _said(
        self, site: str, nodes: list[str], *, reachable: bool, since: datetime | None, old: SiteStatus | None
    ) -> None:
        ctx = self._ctx
        who = ", ".join(nodes)
        if not reachable:
            when = f" since {since:%H:%M:%S} UTC" if since is not None else ""
            ctx.event(
                "Warning",
                "SiteUnreachable",
                f"site {site} unreachable{when} (its bridge to the cloud broker is down): {who}; their entries "
                "keep the last state they sent, their messages wait on the site broker",
            )
            return
        away = ""
        if old is not None and old.since is not None and since is not None:
            away = f" after {(since - old.since).total_seconds():.0f} s"
        ctx.event("Normal", "SiteReachable", f"site {site} reachable again{away}: {who}")

    def _condition(self, sites: list[SiteStatus]) -> None:
        """SitesReachable: False while a site is down (naming it, since when and its edges); True again once
        every site is back. A job whose sites never went down has no such row."""
        book = self._ctx.book
        down = [s for s in sites if not s.reachable]
        if down:
            book.condition(ConditionType.SITES_REACHABLE, "SiteUnreachable", unreachable_message(down), status="False")
            return
        row = next((c for c in self._ctx.status.conditions if c.type is ConditionType.SITES_REACHABLE), None)
        if row is not None and row.status != "True":
            book.condition(ConditionType.SITES_REACHABLE, "SitesReachable", "every site of the job is reachable")


def unreachable_message(down: list[SiteStatus]) -> str:
    """``site site-a unreachable since 10:04:05 UTC (edge1, edge2)``, one clause per site."""
    parts = []
    for site in down:
        when = f" since {site.since:%H:%M:%S} UTC" if site.since is not None else ""
        parts.append(f"site {site.name} unreachable{when} ({', '.join(site.nodes)})")
    return "; ".join(parts)
