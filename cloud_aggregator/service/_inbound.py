"""What the aggregator does with an edge's message on a job's topics before the job engine: the residency ledger.

Every such message is a line of the job's ledger (`runtime.Ledger.received`). An update chunk is hashed here
once, for the ledger and for the assembler (which checks this digest against the manifest's instead of
hashing the chunk again), and a manifest is parsed once for both: at 100 edges the ledger's own hashing was
about a sixth of the logic thread.
"""

from __future__ import annotations

import hashlib
import time

from broker import Inbound, manifest_from_payload
from cloud_aggregator.engine import Controller
from runtime import Ledger
from schemas import Channel, ParsedTopic, TransferManifest, WireError

__all__ = ["record", "route_transfer"]


def record(
    ledger: Ledger,
    controller: Controller,
    parsed: ParsedTopic,
    msg: Inbound,
    *,
    sha256: str | None = None,
    manifest: TransferManifest | None = None,
) -> None:
    """Note a message on an edge's topic of a job this node aggregates in the job's ledger (`sha256`, `manifest`:
    the payload's digest or parsed manifest, when known already)."""
    uid = controller.run_of(parsed.job)  # also a job that finished before this process started
    if uid is not None and parsed.node is not None:
        ledger.received(
            msg.topic,
            msg.payload,
            job=parsed.job,
            uid=uid,
            node=parsed.node,
            sha256=sha256,
            manifest=manifest,
            parsed=parsed,
        )


def route_transfer(
    ledger: Ledger, controller: Controller, parsed: ParsedTopic, msg: Inbound, *, digest: str | None = None
) -> None:
    """An update manifest or chunk: in the ledger, then the job engine assembles, stores and acknowledges (before
    the MQTT ack of the message). `digest`: a chunk's SHA-256, when it was hashed as it arrived."""
    now_s = time.monotonic()
    if parsed.channel is Channel.UPDATE_CHUNK:
        if digest is None and msg.payload:
            digest = hashlib.sha256(msg.payload).hexdigest()
        record(ledger, controller, parsed, msg, sha256=digest)
        controller.on_update_chunk(parsed, msg.payload, now_s, digest=digest)
        return
    manifest, problem = None, None
    if msg.payload:
        try:
            manifest = manifest_from_payload(msg.payload)
        except WireError as exc:
            problem = exc.reason
    record(ledger, controller, parsed, msg, manifest=manifest)
    if manifest is not None:
        controller.on_update_manifest(parsed, manifest, now_s)
    elif problem is not None:
        controller.on_malformed_manifest(parsed, problem)
