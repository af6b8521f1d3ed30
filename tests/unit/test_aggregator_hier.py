"""Hierarchical rounds in the job engine (MemoryPort, no broker): site partials fold to flat FedAvg, count
once (resends, restarts), settle their sites, and are refused with the rules that need each update."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from cloud_aggregator.engine import Job, JobFacts, SiteFold, Stage
from cloud_aggregator.testing import MemoryPort, make_transfer
from schemas import (
    Dataset,
    FederatedLearningJob,
    Kind,
    Model,
    Phase,
    TransferManifest,
    WorkerFrame,
    manifest_for,
    parse_documents,
    read_header,
)
from schemas import TransferOrigin as Origin
from tests.unit.test_job_rounds import SETTINGS, UID, Arrays

JOB = "hier"
SITES = {"site-a": ["e1", "e2"], "site-b": ["e3"], "site-c": ["e4", "e5"]}
AGGS = {"site-a": "agg-a", "site-b": "agg-b", "site-c": "agg-c"}
# Unequal sample counts: a plain mean of site means would differ from FedAvg.
SAMPLES = {"e1": 7, "e2": 13, "e3": 29, "e4": 3, "e5": 11}
HIER = {"hierarchical": "true", "site_aggregators": ",".join(f"{s}={a}" for s, a in AGGS.items())}


def documents(
    sites: Mapping[str, Sequence[str]], aggregator: Mapping[str, str], *, flat: bool = False
) -> tuple[FederatedLearningJob, dict[str, Dataset], dict[str, Model]]:
    """The job's YAML: a Dataset per edge, the Model, the job (each training worker's ``site`` unless flat)."""

    def params(pairs: Mapping[str, str]) -> str:
        return "[" + ", ".join(f"{{key: {k}, value: '{v}'}}" for k, v in pairs.items()) + "]"

    edges = [(site, e) for site, members in sites.items() for e in members]
    docs = [
        f"apiVersion: sedna.io/v1alpha1\nkind: Dataset\nmetadata: {{name: {e}-data}}\n"
        f"spec: {{url: /data/train.txt, format: txt, nodeName: {e}}}\n"
        for _, e in edges
    ]
    docs.append("apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {url: /model, format: ckpt}\n")
    trainers = "".join(
        f"    - nodeName: {e}\n      dataset: {{name: {e}-data}}\n      workerSpec: {{scriptDir: /code, "
        f"scriptBootFile: train.py, frameworkType: tensorflow, parameters: {params({} if flat else {'site': s})}}}\n"
        for s, e in edges
    )
    docs.append(
        f"apiVersion: sedna.io/v1alpha1\nkind: FederatedLearningJob\nmetadata: {{name: {JOB}}}\nspec:\n"
        f"  aggregationWorker:\n    model: {{name: m}}\n    nodeName: cloud0\n"
        f"    workerSpec: {{scriptDir: /code, scriptBootFile: agg.py, frameworkType: tensorflow, "
        f"parameters: {params(aggregator)}}}\n  trainingWorkers:\n{trainers}"
    )
    resources = parse_documents("---\n".join(docs), "hier.yaml")
    job = next(r for r in resources if isinstance(r, FederatedLearningJob))
    return (
        job,
        {r.metadata.name: r for r in resources if isinstance(r, Dataset)},
        {r.metadata.name: r for r in resources if isinstance(r, Model)},
    )


def start(
    port: MemoryPort,
    aggregator: Mapping[str, str] = HIER,
    *,
    flat: bool = False,
    aggregation: str = "FedAvg",
    exit_round: int = 2,
    resume: bool = False,
) -> Job:
    spec, datasets, models = documents(SITES, aggregator, flat=flat)
    facts = JobFacts.of(spec, datasets, models, node="cloud0", uid=UID, settings=SETTINGS, resume=resume)
    previous = port.statuses.get((Kind.JOB, JOB)) if resume else None
    job = Job(facts, port, previous_status=previous)  # type: ignore[arg-type]
    job.start(0.0)
    job.on_script_frame(WorkerFrame(type="config", aggregation=aggregation, exit_round=exit_round), 0.1)
    return job


def model(seed: int) -> Arrays:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)]


def send(job: Job, node: str, round_: int, arrays: Arrays, *, kind: str = "update", samples: int = 10) -> None:
    manifest, blob = make_transfer(
        arrays,
        kind=kind,  # type: ignore[arg-type]
        job=JOB,
        uid=UID,
        round_=round_,
        sender=node,
        num_samples=samples,
    )
    if kind == "init":
        job.on_init_transfer(node, 0, manifest, blob)
    else:
        job.on_update(node, round_, manifest, blob)


def partial(site: str, round_: int, updates: Mapping[str, Arrays]) -> tuple[TransferManifest, bytes]:
    """What the site aggregator of `site` forwards: its edges' updates folded (`SiteFold`) as one blob."""
    fold = SiteFold(job=JOB, round=round_, sender=AGGS[site])
    for edge in SITES[site]:
        assert fold.fold(edge, updates[edge], SAMPLES[edge])
    blob = fold.partial(names=["w0", "w1"])
    origin = Origin("partial", JOB, UID, round_, AGGS[site], fold.total)
    return manifest_for(blob, origin, chunk_size=len(blob), transfer=f"{round_:02d}{AGGS[site].encode().hex()}"), blob


def updates_of(round_: int) -> dict[str, Arrays]:
    return {e: model(100 * round_ + i) for i, e in enumerate(SAMPLES)}


def flat_globals(aggregation: str) -> list[Arrays]:
    port = MemoryPort()
    job = start(port, {}, flat=True, aggregation=aggregation)
    send(job, "e1", 0, model(0), kind="init")
    for r in (1, 2):
        for edge, arrays in updates_of(r).items():
            send(job, edge, r, arrays, samples=SAMPLES[edge])
    assert job.stage is Stage.FINAL
    return [g.arrays for g in port.published_globals]


@pytest.mark.parametrize("aggregation", ["FedAvg", "FedAdam"])
def test_partials_of_unequal_sites_fold_to_the_flat_jobs_models(aggregation: str) -> None:
    port = MemoryPort()
    job = start(port, aggregation=aggregation)
    send(job, "agg-b", 0, model(0), kind="init")  # a site aggregator forwards one init
    for r in (1, 2):
        for site in SITES:
            manifest, blob = partial(site, r, updates_of(r))
            job.on_update(AGGS[site], r, manifest, blob)
    assert job.stage is Stage.FINAL

    hier = [g.arrays for g in port.published_globals]
    flat = flat_globals(aggregation)
    assert len(hier) == len(flat) == 3
    for got, want in zip(hier, flat, strict=True):
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    status = port.job_status(JOB)
    record = status.rounds[-1]
    assert sorted(record.participants) == sorted(SAMPLES) and record.total_samples == sum(SAMPLES.values())
    assert record.missing == []
    full = port.round_records[(JOB, 2)]  # the full record (rounds/<r>/record): each edge's share
    assert full is not None and {w.node: w.num_samples for w in full.workers or []} == SAMPLES
    assert any(e.reason == "PartialAccepted" and "site-c" in e.message for e in status.events)


def test_a_partial_counts_once_after_a_resend_a_replay_and_a_restart() -> None:
    port = MemoryPort()
    job = start(port)
    send(job, "agg-a", 0, model(0), kind="init")
    ups = updates_of(1)
    manifest, blob = partial("site-a", 1, ups)
    job.on_update("agg-a", 1, manifest, blob)
    assert port.acks[-1].accepted and port.acks[-1].node == "agg-a"

    job.on_update_manifest("agg-a", 1, manifest, 1.0)  # no ack seen: the manifest again
    assert port.acks[-1].accepted and port.acks[-1].reason == "already stored"
    again = manifest.model_copy(update={"transfer": "ffffffffffffffff"})  # re-sent under another transfer id
    job.on_update("agg-a", 1, again, blob)
    assert port.acks[-1].accepted and port.acks[-1].transfer == "ffffffffffffffff"
    status = port.job_status(JOB)
    assert status.waiting_for == ["e3", "e4", "e5"]

    # kill -9 of the cloud: a new engine on the same disk refolds site-a's partial from the spool, once.
    port2 = MemoryPort(disk=port.disk)
    port2.statuses = dict(port.statuses)
    job = start(port2, resume=True)
    assert job.stage is Stage.TRAINING and job.round == 1
    assert port2.job_status(JOB).waiting_for == ["e3", "e4", "e5"]
    job.on_update("agg-a", 1, manifest, blob)  # the site's outbox resends after the restart
    assert port2.acks[-1].accepted
    for site in ("site-b", "site-c"):
        m, b = partial(site, 1, ups)
        job.on_update(AGGS[site], 1, m, b)
    assert job.round == 2
    record = port2.job_status(JOB).rounds[-1]
    assert record.total_samples == sum(SAMPLES.values())  # site-a's 20 samples counted once

    job.on_update_manifest("agg-a", 1, manifest, 2.0)  # its outbox resends after the round closed
    assert port2.acks[-1].accepted and port2.acks[-1].reason == "already stored"
    assert job.round == 2

    # And after another restart, from round 1's checkpoint: the checkpoint's ledger names the partial.
    port3 = MemoryPort(disk=port2.disk)
    port3.statuses = dict(port2.statuses)
    job = start(port3, resume=True)
    assert job.round == 2
    job.on_update_manifest("agg-a", 1, manifest, 3.0)
    assert port3.acks[-1].accepted and port3.acks[-1].reason == "already stored"


def test_a_partial_settles_its_site_and_missing_edges_go_on_the_record() -> None:
    """A site that closed without one of its edges forwards what it has: the cloud waits for none of them."""
    port = MemoryPort()
    job = start(port, exit_round=1)
    send(job, "agg-a", 0, model(0), kind="init")
    ups = updates_of(1)
    fold = SiteFold(job=JOB, round=1, sender="agg-c")
    fold.fold("e4", ups["e4"], SAMPLES["e4"])
    assert not fold.fold("e4", ups["e4"], SAMPLES["e4"])  # an edge's resend is folded once
    blob = fold.partial()
    job.on_update(
        "agg-c",
        1,
        manifest_for(blob, Origin("partial", JOB, UID, 1, "agg-c", 3), chunk_size=999, transfer="cc" * 8),
        blob,
    )
    assert port.job_status(JOB).waiting_for == ["e1", "e2", "e3"]
    for site in ("site-a", "site-b"):
        m, b = partial(site, 1, ups)
        job.on_update(AGGS[site], 1, m, b)
    assert job.stage is Stage.FINAL
    assert port.job_status(JOB).rounds[-1].missing == ["e5"]


def test_partials_that_are_not_their_sites_are_refused() -> None:
    port = MemoryPort()
    job = start(port)
    send(job, "agg-a", 0, model(0), kind="init")
    ups = updates_of(1)

    send(job, "e1", 1, ups["e1"])  # an edge of a hierarchical job uploads to its site, not the cloud
    assert not port.acks[-1].accepted and "hierarchical" in port.acks[-1].reason and "agg-a" in port.acks[-1].reason

    fold = SiteFold(job=JOB, round=1, sender="agg-b")
    fold.fold("e1", ups["e1"], 7)  # agg-b claims site-a's edge
    blob = fold.partial()
    job.on_update(
        "agg-b",
        1,
        manifest_for(blob, Origin("partial", JOB, UID, 1, "agg-b", 7), chunk_size=999, transfer="bb" * 8),
        blob,
    )
    assert not port.acks[-1].accepted and "lists e1, not one of its edges" in port.acks[-1].reason

    m, b = partial("site-a", 1, ups)
    stranger = SiteFold(job=JOB, round=1, sender="e3")
    stranger.fold("e3", ups["e3"], 29)
    sblob = stranger.partial()
    job.on_update(
        "e3", 1, manifest_for(sblob, Origin("partial", JOB, UID, 1, "e3", 29), chunk_size=999, transfer="ee" * 8), sblob
    )
    assert not port.acks[-1].accepted and "not a site aggregator" in port.acks[-1].reason
    assert port.job_status(JOB).waiting_for == list(SAMPLES)
    job.on_update("agg-a", 1, m, b)
    assert read_header(b)[0].parts is not None and port.acks[-1].accepted


@pytest.mark.parametrize(
    ("extra", "aggregation", "expected"),
    [
        ({}, "FedMedian", "hierarchical=true cannot be combined with the robust rule FedMedian"),
        ({"secure_aggregation": "true"}, "FedAvg", "hierarchical=true cannot be combined with secure_aggregation"),
        ({"aggregation_mode": "async"}, "FedAvg", "hierarchical=true cannot be combined with aggregation_mode=async"),
        ({"clip_norm": "1"}, "FedAvg", "cannot be combined with clip_norm=1"),
        ({"site_aggregators": ""}, "FedAvg", "site_aggregators is required with hierarchical=true"),
        ({"site_aggregators": "site-a=agg-a"}, "FedAvg", "trainingWorkers[e3] parameter site='site-b'"),
        ({"site_aggregators": "site-a=agg-a,site-b=agg-a,site-c=x"}, "FedAvg", "its own aggregator node"),
        ({"site_aggregators": "site-a"}, "FedAvg", 'expected "<site>=<aggregator node>"'),
    ],
)
def test_a_hierarchical_job_that_cannot_run_fails_naming_the_parameter(
    extra: dict[str, Any], aggregation: str, expected: str
) -> None:
    port = MemoryPort()
    start(port, {**HIER, **extra}, aggregation=aggregation)
    status = port.job_status(JOB)
    assert status.phase is Phase.FAILED
    assert expected in status.message, status.message
    assert status.conditions[-1].reason in ("InvalidHierarchyParameters", "InvalidSecAggParameters")


def test_the_plan_tells_each_edge_its_site_and_the_sites_aggregators() -> None:
    port = MemoryPort()
    start(port)
    plan = port.plans[JOB]
    assert plan is not None
    for worker in plan.workers:
        assert worker.parameters["hierarchical"] == "true"
        assert worker.parameters["site_aggregators"] == HIER["site_aggregators"]
    assert {w.node: w.parameters["site"] for w in plan.workers} == {e: s for s, es in SITES.items() for e in es}


def test_site_fold_restarted_from_its_spool_forwards_the_same_partial() -> None:
    """The site aggregator's state is its spool: a new SiteFold over the stored updates (any order, a
    duplicate among them) gives the same mean and total, so a kill -9 loses nothing and counts nothing twice."""
    ups = updates_of(1)
    before = SiteFold(job=JOB, round=1, sender="agg-c")
    before.fold("e4", ups["e4"], 3)
    before.fold("e5", ups["e5"], 11)
    after = SiteFold(job=JOB, round=1, sender="agg-c")
    for edge, samples in (("e5", 11), ("e4", 3), ("e5", 11)):
        after.fold(edge, ups[edge], samples)
    assert after.total == before.total == 14
    for a, b in zip(after.mean(), before.mean(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    header = read_header(after.partial())[0]
    assert header.kind == "partial" and header.num_samples == 14
    assert sorted((p.node, p.samples) for p in header.parts or ()) == [("e4", 3), ("e5", 11)]
