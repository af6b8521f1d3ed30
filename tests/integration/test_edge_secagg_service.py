"""The edge service's secure aggregation wiring on a real Mosquitto: a real EdgeService (in process, a fake
training script) subscribes to its secure aggregation job's round states and bundles, and answers the
aggregator's retained states with its retained KeyAdvert and ShareBundle; the test plays the aggregator and
one other edge (with runtime's party functions)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker import MqttSettings
from edge_trainer.engine import LaunchSpec
from edge_trainer.service import EdgeService
from runtime import RoundContext, RoundSecrets, ScriptExited, ScriptFrame, share_bundle
from schemas import (
    DatasetRef,
    JobPlan,
    KeyAdvert,
    ModelRef,
    PlannedWorker,
    ScriptRef,
    SecAggMember,
    SecAggPhase,
    SecAggState,
    ShareBundle,
    Topics,
    WorkerFrame,
    b64decode,
    b64encode,
    encode_weights,
)
from tests.helpers.mqtt import SessionFactory, take
from tests.helpers.secagg_edge import node_root
from tests.helpers.secagg_edge import state as helper_state

T = Topics()
JOB, UID, NODE, PEER = "sa-job", "uid-sa-1", "edge1", "edge2"
WAIT = 10.0


def make_plan() -> JobPlan:
    return JobPlan(
        job=JOB,
        uid=UID,
        aggregation_node="cloud0",
        aggregation="FedAvg",
        exit_round=2,
        participants=[NODE, PEER],
        model=ModelRef(name="m", url="/model", format="ckpt"),
        workers=[
            PlannedWorker(
                node=NODE,
                dataset=DatasetRef(name="d1", url="/data/1.txt", format="txt", node_name=NODE),
                script=ScriptRef(dir="/code", boot_file="train.py", framework_type="tensorflow"),
                parameters={"secure_aggregation": "true"},
            )
        ],
        chunk_size=8192,
    )


@dataclass
class HelloScript:
    """A training script that says hello with 8 samples and then waits (no round is trained here)."""

    run_id: str
    put: Callable[[object], None]

    def send(self, frame: WorkerFrame, body: bytes | None = None) -> None:
        pass

    def stop(self, grace: float = 10.0) -> None:
        self.put(ScriptExited(JOB, self.run_id, 0, ""))

    def wait(self, timeout: float | None) -> bool:
        return True

    def log_tail(self, lines: int = 20, max_chars: int = 2000) -> str:
        return ""


class HelloScriptService(EdgeService):
    def _launch(self, spec: LaunchSpec, run_id: str) -> Any:
        script = HelloScript(run_id, self._events.put)
        init = encode_weights(
            [np.zeros(4, dtype=np.float32)], kind="init", job=JOB, round_=0, sender=NODE, num_samples=8
        )
        self._events.put(ScriptFrame(JOB, run_id, WorkerFrame(type="hello", num_samples=8, has_body=True), init))
        return script


@pytest.fixture
def edge_root(tmp_path: Path) -> Path:
    return node_root(tmp_path)


@dataclass
class RunningEdge:
    stop: threading.Event
    thread: threading.Thread

    def close(self) -> None:
        """Stop the service (idempotent)."""
        self.stop.set()
        self.thread.join(20.0)
        assert not self.thread.is_alive()


@pytest.fixture
def start_edge(
    edge_root: Path, mqtt_settings_factory: Callable[..., MqttSettings]
) -> Iterator[Callable[[], RunningEdge]]:
    """``start()``: the edge service on its root (again after a `close`: a restart)."""
    running: list[RunningEdge] = []

    def start() -> RunningEdge:
        service = HelloScriptService(NODE, edge_root, mqtt_settings_factory(NODE), stop_grace=1.0)
        stop = threading.Event()
        edge = RunningEdge(stop, threading.Thread(target=service.run, args=(stop,), daemon=True))
        edge.thread.start()
        running.append(edge)
        return edge

    yield start
    for edge in running:
        edge.close()


def state(phase: SecAggPhase, u1: list[SecAggMember] | None = None) -> SecAggState:
    """The helper's round state, for this test's job run and clip."""
    return helper_state(phase, u1=u1, job=JOB, uid=UID, clip=1.0)


def test_the_edge_service_answers_retained_states_with_its_keys_and_bundle(
    session_factory: SessionFactory, edge_root: Path, start_edge: Callable[[], RunningEdge]
) -> None:
    """A retained `keys` state published before the edge starts: the edge advertises its keys (retained, the
    keys of its round file); the `shares` state with it and edge2 in U1: it publishes its bundle, whose one
    entry is sealed for edge2. Restarted, it reads the retained state and its round file and publishes the
    very same bundle again."""
    cloud, inbox = session_factory("cloud0")
    cloud.subscribe(T.secagg_step(JOB, 1, "keys", NODE))
    cloud.subscribe(T.secagg_step(JOB, 1, "shares", NODE))
    cloud.barrier(WAIT)
    cloud.publish(T.plan(JOB), make_plan().to_json(), retain=True).wait(WAIT)
    cloud.publish(T.secagg_state(JOB, 1), state("keys").to_json(), retain=True).wait(WAIT)
    edge = start_edge()

    [keys_msg] = take(inbox, 1, WAIT)
    cloud.ack(keys_msg)
    advert = KeyAdvert.model_validate_json(keys_msg.payload)
    on_disk = json.loads((edge_root / "state" / JOB / "secagg" / "r1.json").read_bytes())
    secrets = RoundSecrets.from_json(on_disk["secrets"])
    assert (advert.node, advert.uid, advert.num_samples) == (NODE, UID, 8)
    assert b64decode(advert.c_public, "c") == secrets.c_public

    late, late_inbox = session_factory("late-reader")
    late.subscribe(T.secagg_step(JOB, 1, "keys", NODE))
    [retained] = take(late_inbox, 1, WAIT)
    assert retained.retain and retained.payload == keys_msg.payload

    peer = RoundSecrets.fresh()
    u1 = [
        SecAggMember(node=NODE, x=1, c_public=advert.c_public, s_public=advert.s_public, num_samples=8),
        SecAggMember(
            node=PEER, x=2, c_public=b64encode(peer.c_public), s_public=b64encode(peer.s_public), num_samples=5
        ),
    ]
    cloud.publish(T.secagg_state(JOB, 1), state("shares", u1).to_json(), retain=True).wait(WAIT)
    sealed, _ = share_bundle(
        peer,
        RoundContext(f"{JOB}/{UID}", 1),
        own=PEER,
        roster={m.node: (m.x, b64decode(m.c_public, "c")) for m in u1},
        threshold=2,
    )
    peer_bundle = ShareBundle(job=JOB, uid=UID, round=1, node=PEER, sealed={k: b64encode(v) for k, v in sealed.items()})
    cloud.publish(T.secagg_step(JOB, 1, "shares", PEER), peer_bundle.to_json(), retain=True).wait(WAIT)
    [shares_msg] = take(inbox, 1, WAIT)
    cloud.ack(shares_msg)
    bundle = ShareBundle.model_validate_json(shares_msg.payload)
    assert bundle.node == NODE and list(bundle.sealed) == [PEER]
    assert json.loads((edge_root / "state" / JOB / "secagg" / "r1.json").read_bytes())["bundle"] == bundle.sealed

    edge.close()
    start_edge()
    [again] = take(inbox, 1, WAIT)
    cloud.ack(again)
    assert again.topic == shares_msg.topic and again.payload == shares_msg.payload
