"""Hierarchical rounds (aggregation-worker parameter ``hierarchical: "true"``): sites and their partial aggregates.

A hierarchical job names a site aggregator per factory site (``site_aggregators: "a=agg-a,b=agg-b"``) and
each training worker's site (its own parameter ``site``). Each round, a site aggregator folds its site's
edges' updates (`SiteFold`, FedAvg's weighted sum) and forwards ONE partial aggregate to the cloud: a
weights blob of kind ``partial`` holding the site's weighted mean, whose ``num_samples`` is the site's
total and whose header lists each edge's share (`schemas.PartShare`). The cloud folds a partial as one
update weighted by the site's total: sum over sites of (mean_s * n_s) / sum n_s is the flat FedAvg of
every edge, so the result equals the flat job's to float tolerance, and a server optimiser (FedAvgM,
FedAdam...) steps from that same average. Each edge listed is counted for the round (its sample count on
the record); the site's other edges are settled for the round (the site sent its one partial).

Rules that need each update (robust rules), pairwise masks across every edge (secure aggregation),
per-update weights (asynchronous staleness, DP-FedAvg's equal weights, clipping at the aggregator) or a
per-edge residual at the aggregator (top-k) are refused with hierarchical rounds (`hierarchy_conflict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator._errors import UpdateRejectedError
from cloud_aggregator._privacy import Privacy
from cloud_aggregator._robust import RobustStrategy
from cloud_aggregator._strategy import Strategy
from schemas import (
    PartShare,
    PlannedWorker,
    SecAggSettings,
    WeightsHeader,
    check_name,
    encode_weights,
    update_compression,
)

__all__ = ["Hierarchy", "SiteFold", "hierarchy_conflict", "hierarchy_of", "plan_parameters"]

Arrays = list[npt.NDArray[Any]]


def _lowered(parameters: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in parameters.items()}


@dataclass(frozen=True)
class Hierarchy:
    """A hierarchical job's sites: each site's aggregator node and its edges (training workers)."""

    aggregators: Mapping[str, str]  # site -> its aggregator's node
    edges: Mapping[str, tuple[str, ...]]  # site -> its training workers' nodes, in the spec's order
    # Seconds a site aggregator waits from its round's start before it forwards what it has (0: every edge)
    site_deadline: float = 0.0

    def site_of_aggregator(self, node: str) -> str | None:
        return next((site for site, agg in self.aggregators.items() if agg == node), None)

    def site_of(self, edge: str) -> str | None:
        return next((site for site, edges in self.edges.items() if edge in edges), None)

    def describe(self) -> str:
        return "hierarchical: " + "; ".join(
            f"site {site} via {self.aggregators[site]} ({', '.join(self.edges[site])})" for site in self.aggregators
        )

    def check_parts(self, node: str, header: WeightsHeader, counted: Mapping[str, int]) -> tuple[PartShare, ...]:
        """A partial from `node`: its parts name only its own site's edges, none counted this round already.

        Raises UpdateRejectedError saying which edge is wrong."""
        site = self.site_of_aggregator(node)
        if site is None:
            raise UpdateRejectedError(f"{node} is not a site aggregator of this job")
        parts = header.parts or ()
        own = self.edges[site]
        for part in parts:
            if part.node not in own:
                raise UpdateRejectedError(
                    f"the partial of site {site} lists {part.node}, not one of its edges ({', '.join(own)})"
                )
            if part.node in counted:
                raise UpdateRejectedError(f"{part.node}'s update is counted in this round already")
        return parts


def hierarchy_of(parameters: Mapping[str, str], planned: Sequence[PlannedWorker]) -> Hierarchy | None:
    """The job's hierarchy from the aggregation worker's `parameters` and each planned worker's ``site``
    parameter; None when ``hierarchical`` is not "true". Raises ValueError naming the parameter and what
    was expected."""
    params = _lowered(parameters)
    if params.get("hierarchical", "false").strip().lower() != "true":
        return None
    raw = params.get("site_aggregators", "").strip()
    if not raw:
        raise ValueError(
            'site_aggregators is required with hierarchical=true: "<site>=<aggregator node>,..." (one per site)'
        )
    aggregators: dict[str, str] = {}
    for item in raw.split(","):
        site, sep, node = (s.strip() for s in item.partition("="))
        if not sep:
            raise ValueError(f'site_aggregators entry {item.strip()!r}: expected "<site>=<aggregator node>"')
        check_name(site, "site_aggregators: site")
        check_name(node, "site_aggregators: node")
        if site in aggregators:
            raise ValueError(f"site_aggregators names site {site} twice")
        aggregators[site] = node
    nodes = list(aggregators.values())
    if len(set(nodes)) != len(nodes):
        raise ValueError(f"site_aggregators: each site needs its own aggregator node, got {', '.join(nodes)}")
    edges: dict[str, list[str]] = {site: [] for site in aggregators}
    for worker in planned:
        site = _lowered(worker.parameters).get("site", "").strip()
        if site not in edges:
            raise ValueError(
                f"trainingWorkers[{worker.node}] parameter site={site!r}: expected one of the sites of "
                f"site_aggregators ({', '.join(aggregators)})"
            )
        if worker.node in aggregators.values():
            raise ValueError(f"site_aggregators: {worker.node} is a training worker, not a site aggregator")
        edges[site].append(worker.node)
    empty = [site for site, members in edges.items() if not members]
    if empty:
        raise ValueError(f"site_aggregators: no training worker is in site {', '.join(empty)}")
    try:
        deadline = float(params.get("site_deadline", "0") or 0)
    except ValueError:
        deadline = 0.0  # the spec's check (PARAMETER_BOUNDS) reports it
    return Hierarchy(
        aggregators=aggregators,
        edges={site: tuple(members) for site, members in edges.items()},
        site_deadline=max(0.0, deadline),
    )


def plan_parameters(hierarchy: Hierarchy) -> dict[str, str]:
    """What the plan tells every training worker (and so each site aggregator reading the plan): the job is
    hierarchical, and each site's aggregator; each worker's own ``site`` parameter says which is its own."""
    out = {
        "hierarchical": "true",
        "site_aggregators": ",".join(f"{site}={node}" for site, node in hierarchy.aggregators.items()),
    }
    if hierarchy.site_deadline > 0:
        out["site_deadline"] = f"{hierarchy.site_deadline:g}"
    return out


def hierarchy_conflict(
    strategy: Strategy,
    privacy: Privacy | None,
    secagg: SecAggSettings | None,
    planned: Sequence[PlannedWorker],
    *,
    asynchronous: bool,
) -> str | None:
    """What a hierarchical job cannot be combined with (its message), or None."""
    topk = [w.node for w in planned if update_compression(w.parameters)[0] == "topk"]
    conflicts = [
        (asynchronous, "aggregation_mode=async (staleness weights are per update)"),
        (
            isinstance(strategy, RobustStrategy),
            f"the robust rule {strategy.name} (it needs each edge's update; use FedAvg or a server optimiser)",
        ),
        (secagg is not None, "secure_aggregation=true (its masks pair every edge of the job)"),
        (
            privacy is not None,
            f"dp_mode={privacy.mode if privacy else ''} (the cloud would weigh a site's partial as one update)",
        ),
        (
            strategy.clip_norm > 0,
            f"clip_norm={strategy.clip_norm:g} at the aggregator (it would clip a site's mean, not each update)",
        ),
        (bool(topk), f"compression=topk on trainingWorkers {', '.join(topk)} (its residual is per edge)"),
    ]
    return next((message for conflicted, message in conflicts if conflicted), None)


@dataclass
class SiteFold:
    """One round of a site aggregator: its edges' updates folded into a weighted sum (float64), each once.

    Pure: the site aggregator's spool holds the updates (stored before they are folded), so a restart
    folds them again into a new `SiteFold` and gets the same sum; `partial` encodes what it forwards."""

    job: str
    round: int
    sender: str  # the site aggregator's node
    sums: list[npt.NDArray[np.float64]] = field(default_factory=list)
    parts: dict[str, int] = field(default_factory=dict)  # edge -> its sample count, in fold order

    def fold(self, edge: str, arrays: Sequence[npt.NDArray[Any]], num_samples: int) -> bool:
        """Add `edge`'s update weighted by `num_samples`; False when it is folded already (counted once)."""
        if edge in self.parts:
            return False
        if num_samples <= 0:
            raise ValueError(f"{edge}: num_samples must be > 0, got {num_samples}")
        if not self.sums:
            self.sums = [np.zeros(np.shape(a), np.float64) for a in arrays]
        elif len(arrays) != len(self.sums):
            raise ValueError(f"{edge}: {len(arrays)} tensors, the round's first update had {len(self.sums)}")
        for i, array in enumerate(arrays):
            self.sums[i] += np.asarray(array, np.float64) * num_samples
        self.parts[edge] = num_samples
        return True

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def mean(self, dtypes: Sequence[np.dtype[Any]] | None = None) -> Arrays:
        """The weighted mean, in `dtypes` (default float32, the models' dtype)."""
        if not self.parts:
            raise ValueError("an empty site round has no mean")
        total = self.total
        kinds = dtypes or [np.dtype(np.float32)] * len(self.sums)
        return [(s / total).astype(d) for s, d in zip(self.sums, kinds, strict=True)]

    def partial(self, names: Sequence[str] | None = None, dtypes: Sequence[np.dtype[Any]] | None = None) -> bytes:
        """The partial aggregate's weights blob: the mean, the total, each edge's share."""
        return encode_weights(
            self.mean(dtypes),
            kind="partial",
            job=self.job,
            round_=self.round,
            sender=self.sender,
            num_samples=self.total,
            names=names,
            parts=[PartShare(node=n, samples=s) for n, s in self.parts.items()],
        )
