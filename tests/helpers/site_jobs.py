"""A tiny job on the bridged test bed (tests/helpers/sites.py), for the store-and-forward tests in tests/sites.

`start_site_job` lays out the nodes (the fault tests' numpy script, tests/faults/scripts: no TensorFlow,
every round's start and trained weights recorded under the edge's root, `hold_rounds` gates), starts the
aggregator on the cloud broker and each edge on its site broker, creates the job as the admin and returns
a `JobWatcher` on the cloud broker (as the admin too: the bed's own checks use the monitor identity, and
one identity is one client id). `assert_fedavg` checks the math from what the edges recorded: every
round's global model is the sample-weighted mean of exactly one update per edge, the final one included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flctl import cli as flctl_cli
from flctl.cluster import ADMIN
from schemas import JobStatus, Phase
from tests.helpers.nodes import job_documents, lay_out_nodes
from tests.helpers.sites import CLOUD, SiteBed
from tests.helpers.status import JobWatcher

JOB = "site-job"
# Fast failure detection and retries, as in tests/faults: the aggregator asks for missing chunks after 1 s,
# an edge republishes its manifest when no receipt came within 5 s.
AGGREGATOR_FLAGS = ["--keepalive", "5", "--resume-after", "1"]
EDGE_FLAGS = ["--keepalive", "5"]


def samples_of(index: int) -> int:
    """The index-th edge's sample count: different per edge, so FedAvg's weighting shows."""
    return 24 + 4 * index


@dataclass
class SiteJob:
    bed: SiteBed
    root: Path
    edges: list[str]
    exit_round: int
    watch: JobWatcher

    def samples(self, edge: str) -> int:
        return samples_of(self.edges.index(edge))

    def open_gate(self, edge: str, round_: int) -> None:
        """Let `edge`'s script train round `round_` (tests/faults/scripts/_common.py)."""
        gates = self.root / edge / "gates"
        gates.mkdir(parents=True, exist_ok=True)
        (gates / f"round-{round_}").touch()

    def published_update(self, edge: str, round_: int) -> bool:
        """`edge`'s residency ledger lists the manifest of its update for `round_`: the edge handed the whole
        transfer to its broker (the manifest goes last)."""
        return self.manifests_published(edge, round_) > 0

    def manifests_published(self, edge: str, round_: int) -> int:
        """How many times `edge` published the manifest of its update for `round_` (its residency ledger)."""
        ledger = self.root / edge / "state" / JOB / "ledger.jsonl"
        try:
            text = ledger.read_text()
        except OSError:
            return 0
        return sum(f"/rounds/{round_}/updates/{edge}/" in line and "/manifest" in line for line in text.splitlines())

    def assert_rounds(self, status: JobStatus) -> None:
        """Succeeded; rounds 1..exit_round, each with every edge exactly once and the right sample total."""
        assert status.phase is Phase.SUCCEEDED, self.watch.describe()
        assert [r.round for r in status.rounds] == list(range(1, self.exit_round + 1)), status.rounds
        for record in status.rounds:
            assert sorted(record.participants) == sorted(self.edges), record
            assert record.total_samples == sum(self.samples(e) for e in self.edges), record
            assert record.missing == [], record

    def assert_fedavg(self, status: JobStatus) -> None:
        """Every global model is the FedAvg of one recorded update per edge: round r's global model is what
        every edge started round r + 1 from, and the last one the model each edge saved."""
        recorded = {edge: _recorded(self.root / edge) for edge in self.edges}
        starts = [start for start, _ in recorded[self.edges[0]]]
        globals_ = _distinct(starts)  # round 0's model, then round 1's, ...
        assert len(globals_) == self.exit_round, f"{len(globals_)} distinct start models for {self.exit_round} rounds"
        finals = {}
        for worker in status.workers:
            if worker.role == "training" and worker.model_path:
                with np.load(self.root / worker.node / worker.model_path.lstrip("/")) as saved:
                    finals[worker.node] = [saved["w"], saved["b"]]
        assert sorted(finals) == sorted(self.edges), status.workers
        globals_.append(finals[self.edges[0]])
        for edge in self.edges[1:]:
            for a, b in zip(finals[edge], finals[self.edges[0]], strict=True):
                np.testing.assert_array_equal(a, b, err_msg=f"{edge}'s final model")
        for round_ in range(1, self.exit_round + 1):
            base = globals_[round_ - 1]
            updates = []
            for edge in self.edges:
                trained = [t for s, t in recorded[edge] if _same(s, base)]
                assert trained, f"{edge} recorded no update trained from round {round_ - 1}'s model"
                assert all(_same(t, trained[0]) for t in trained), f"{edge}: different updates for round {round_}"
                updates.append((self.samples(edge), trained[0]))
            total = sum(n for n, _ in updates)
            mean = [sum(n * np.asarray(arrays[i], np.float64) for n, arrays in updates) / total for i in range(2)]
            for got, want in zip(globals_[round_], mean, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"round {round_}'s global model")


Arrays = list[np.ndarray]


def _recorded(root: Path) -> list[tuple[Arrays, Arrays]]:
    """(start, trained) of every train call the edge's scripts recorded."""
    out = []
    for path in sorted((root / "recorded").glob("*.npz")):
        with np.load(path) as f:
            arrays = [f[f"arr_{i}"] for i in range(4)]
        out.append((arrays[:2], arrays[2:]))
    return out


def _same(a: Arrays, b: Arrays) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _distinct(models: list[Arrays]) -> list[Arrays]:
    found: list[Arrays] = []
    for model in models:
        if not any(_same(model, seen) for seen in found):
            found.append(model)
    return found


def start_site_job(
    bed: SiteBed, *, exit_round: int = 3, hold_round: int = 2, ack_timeout: float = 5.0, hidden: int = 16
) -> SiteJob:
    """Lay out, start the services (cloud0 on the cloud broker, each edge on its site's, republishing a manifest
    after `ack_timeout` without a receipt), create the job (every edge's script holds before training
    `hold_round` until its gate opens; the model has 8 x `hidden` + `hidden` parameters) and watch it."""
    root = bed.root
    edges = [edge for site_edges in bed.sites.values() for edge in site_edges]
    labels = {edge: [f"sample-{edge}-{i},{i % 2}" for i in range(samples_of(k))] for k, edge in enumerate(edges)}
    lay_out_nodes(root, labels, script="train_numpy.py")
    spec = root / "job.yaml"
    spec.write_text(
        job_documents(
            [JOB],
            edges,
            model="site-model",
            edge_parameters={"features": 8, "hidden": hidden, "hold_rounds": hold_round, "record_updates": 1},
            aggregator_parameters={"exit_round": exit_round, "participants_count": len(edges)},
        )
    )
    bed.cluster.start_node("cloud0", "aggregator", extra_args=AGGREGATOR_FLAGS)
    for edge in edges:
        bed.cluster.start_node(edge, "edge", extra_args=[*EDGE_FLAGS, "--ack-timeout", f"{ack_timeout:g}"])
    assert flctl_cli.main([*bed.cluster.flctl_args(), "create", "-f", str(spec)]) == 0
    watch = JobWatcher(bed.settings(CLOUD, ADMIN), bed.topics, JOB).__enter__()
    return SiteJob(bed, root, edges, exit_round, watch)
