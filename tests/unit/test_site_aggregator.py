"""A site aggregator's job engine (`SiteJob`) with a port in memory: updates stored before they are
acknowledged and folded once, one partial per round from the outbox, a restart (kill -9) that folds the
spool again and sends the outbox's partial, the site deadline, the cloud's acks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud_aggregator.engine import SiteJob, SpooledUpdate
from cloud_aggregator.testing import make_transfer
from runtime import get_logger
from schemas import DatasetRef as Ds
from schemas import JobPlan, ModelRef, PlannedWorker, ScriptRef, TransferManifest, UpdateAck, decode_weights
from tests.unit.test_aggregator_hier import model

Arrays = list[npt.NDArray[Any]]
JOB, UID = "hier", "0123456789abcdef0123456789abcdef"
SITE_EDGES = {"e1": 7, "e2": 13}


@dataclass
class Disk:
    spool: dict[tuple[int, str], tuple[str, bytes]] = field(default_factory=dict)
    partial: tuple[TransferManifest, bytes] | None = None


@dataclass
class Port:
    disk: Disk = field(default_factory=Disk)
    acks: list[UpdateAck] = field(default_factory=list)
    sent: list[tuple[TransferManifest, list[int] | None]] = field(default_factory=list)

    def answer(self, ack: UpdateAck) -> None:
        self.acks.append(ack)

    def store_update(self, job: str, round_: int, node: str, transfer: str, blob: bytes | memoryview) -> None:
        self.disk.spool[(round_, node)] = (transfer, bytes(blob))

    def spooled_updates(self, job: str, round_: int) -> list[SpooledUpdate]:
        return [SpooledUpdate(n, t, b) for (r, n), (t, b) in sorted(self.disk.spool.items()) if r == round_]

    def drop_spool(self, job: str, upto: int) -> None:
        self.disk.spool = {k: v for k, v in self.disk.spool.items() if k[0] > upto}

    def save_partial(self, job: str, manifest: TransferManifest, blob: bytes) -> None:
        self.disk.partial = (manifest, blob)

    def load_partial(self, job: str) -> tuple[TransferManifest, bytes] | None:
        return self.disk.partial

    def drop_partial(self, job: str) -> None:
        self.disk.partial = None

    def send_partial(self, manifest: TransferManifest, blob: bytes, indices: list[int] | None) -> None:
        self.sent.append((manifest, indices))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def plan(site_deadline: str | None = None) -> JobPlan:
    def worker(node: str, site: str) -> PlannedWorker:
        params = {"hierarchical": "true", "site_aggregators": "site-a=agg-a,site-b=agg-b", "site": site}
        if site_deadline is not None:
            params["site_deadline"] = site_deadline
        return PlannedWorker(
            node=node,
            dataset=Ds(name=f"{node}-data", url="/data/train.txt", format="txt", node_name=node),
            script=ScriptRef(dir="/code", boot_file="train.py", framework_type="tensorflow"),
            parameters=params,
        )

    return JobPlan(
        job=JOB,
        namespace="default",
        uid=UID,
        aggregation_node="cloud0",
        aggregation="FedAvg",
        exit_round=3,
        participants=["e1", "e2", "e3"],
        model=ModelRef(name="m", url="/model", format="ckpt"),
        workers=[worker("e1", "site-a"), worker("e2", "site-a"), worker("e3", "site-b")],
        chunk_size=1024,
    )


def site(port: Port, clock: Clock, **kwargs: str) -> SiteJob:
    return SiteJob(plan(**kwargs), site="site-a", node="agg-a", port=port, log=get_logger(), clock=clock)


def global_blob(round_: int, arrays: Arrays) -> bytes:
    _, blob = make_transfer(arrays, kind="global", job=JOB, uid=UID, round_=round_, sender="cloud0", num_samples=1)
    return blob


def update(node: str, round_: int, arrays: Arrays) -> tuple[TransferManifest, bytes]:
    return make_transfer(
        arrays, kind="update", job=JOB, uid=UID, round_=round_, sender=node, num_samples=SITE_EDGES[node]
    )


def mean(arrays: dict[str, Arrays]) -> Arrays:
    total = sum(SITE_EDGES[n] for n in arrays)
    out: Arrays = []
    for i in range(2):
        acc = np.zeros(np.shape(arrays["e1"][i]), np.float64)
        for n, a in arrays.items():
            acc += SITE_EDGES[n] * np.asarray(a[i], np.float64)
        out.append(acc / total)
    return out


def test_site_folds_each_edge_once_and_forwards_one_partial_from_its_outbox() -> None:
    port, clock = Port(), Clock()
    job = site(port, clock)
    assert job.edges == ["e1", "e2"]
    job.on_global(0, global_blob(0, model(0)))
    ups = {"e1": model(1), "e2": model(2)}
    m1, b1 = update("e1", 1, ups["e1"])
    job.on_update("e1", 1, m1, b1)
    job.on_update("e1", 1, m1, b1)  # a resend: answered, folded once
    assert [(a.accepted, a.reason) for a in port.acks] == [(True, "stored"), (True, "already stored")]
    assert (1, "e1") in port.disk.spool and not port.sent

    m2, b2 = update("e2", 1, ups["e2"])
    job.on_update("e2", 1, m2, b2)
    assert len(port.sent) == 1 and port.disk.partial is not None
    manifest, blob = port.disk.partial
    header, arrays = decode_weights(blob)
    assert manifest.kind == "partial" and manifest.sender == "agg-a" and manifest.num_samples == 20
    assert sorted((p.node, p.samples) for p in header.parts or ()) == [("e1", 7), ("e2", 13)]
    for got, want in zip(arrays, mean(ups), strict=True):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-6)

    clock.now = 31.0  # no ack within the ack timeout: the manifest again
    job.tick()
    assert port.sent[-1] == (manifest, [])
    job.on_ack(
        UpdateAck(job=JOB, uid=UID, round=1, node="agg-a", transfer=manifest.transfer, accepted=False, missing=[2])
    )
    assert port.sent[-1] == (manifest, [2])
    job.on_ack(UpdateAck(job=JOB, uid=UID, round=1, node="agg-a", transfer=manifest.transfer, accepted=True))
    assert port.disk.partial is None and port.disk.spool == {}  # the cloud holds it now
    job.on_update("e2", 1, m2, b2)
    assert port.acks[-1].accepted and len(port.sent) == 3  # answered again; nothing forwarded twice


def test_a_killed_site_aggregator_refolds_its_spool_and_sends_its_outbox_again() -> None:
    port, clock = Port(), Clock()
    job = site(port, clock)
    job.on_global(0, global_blob(0, model(0)))
    ups = {"e1": model(1), "e2": model(2)}
    job.on_update("e1", 1, *update("e1", 1, ups["e1"]))

    # kill -9 mid-round: a new engine on the same disk; the broker gives it the retained global model again
    port = Port(disk=port.disk)
    job = site(port, clock)
    job.on_global(0, global_blob(0, model(0)))
    assert job.fold is not None and job.fold.parts == {"e1": 7} and not port.acks  # from the spool, unanswered
    job.on_update("e2", 1, *update("e2", 1, ups["e2"]))
    assert len(port.sent) == 1
    sent, _ = port.sent[0]

    # killed again before the cloud's ack: the outbox's partial goes out again, the same transfer
    port = Port(disk=port.disk)
    job = site(port, clock)
    assert [m.transfer for m, i in port.sent] == [sent.transfer] and port.sent[0][1] is None
    job.on_global(0, global_blob(0, model(0)))
    assert len(port.sent) == 1  # not folded and forwarded a second time
    job.on_global(1, global_blob(1, model(5)))  # the cloud closed round 1: round 2 opens
    assert port.disk.partial is None and job.fold is not None and job.fold.round == 2


def test_past_the_site_deadline_the_partial_goes_without_the_missing_edge() -> None:
    port, clock = Port(), Clock()
    job = site(port, clock, site_deadline="10")
    job.on_global(0, global_blob(0, model(0)))
    job.on_update("e1", 1, *update("e1", 1, model(1)))
    clock.now = 9.9
    job.tick()
    assert not port.sent
    clock.now = 10.0
    job.tick()
    manifest, _ = port.sent[0]
    assert manifest.num_samples == 7
    job.on_update("e2", 1, *update("e2", 1, model(2)))  # too late for this round at this site
    assert not port.acks[-1].accepted and "site deadline" in port.acks[-1].reason
    assert len(port.sent) == 1


def test_updates_that_are_not_the_sites_are_refused() -> None:
    port, clock = Port(), Clock()
    job = site(port, clock)
    job.on_global(0, global_blob(0, model(0)))
    m3, b3 = make_transfer(model(3), kind="update", job=JOB, uid=UID, round_=1, sender="e3", num_samples=5)
    job.on_update("e3", 1, m3, b3)
    assert not port.acks[-1].accepted and "not an edge of site site-a" in port.acks[-1].reason
    m, b = make_transfer(model(3), kind="update", job=JOB, uid="f" * 32, round_=1, sender="e1", num_samples=5)
    job.on_update("e1", 1, m, b)
    assert not port.acks[-1].accepted and "uid" in port.acks[-1].reason
    m, b = update("e1", 0, model(1))
    job.on_update("e1", 0, m, b)
    assert not port.acks[-1].accepted and port.acks[-1].reason == "round 0 is closed"
    m, b = update("e1", 2, model(1))  # not open yet here: unanswered, the edge sends its manifest again
    acks = len(port.acks)
    job.on_update("e1", 2, m, b)
    assert len(port.acks) == acks and port.disk.spool == {}
