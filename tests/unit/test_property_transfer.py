"""Property-based tests of chunk reassembly (`broker.Assembler`) and manifest parsing (issue 4, "Bad input").

Several transfers arrive interleaved at random, with duplicates, stale or corrupted chunks, truncated
transfers and bogus manifests: the assembler raises nothing but `TransferError`, completes exactly
the intact transfers with byte-identical blobs (each once), never completes a damaged one, and keeps
its buffered bytes within `max_bytes`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker import Assembler, TransferError, chunk_index, manifest_from_payload, transfer_key
from schemas import TopicError, TransferManifest, WireError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def manifest_for(blob: bytes, chunk_size: int, transfer: str, **overrides: Any) -> TransferManifest:
    chunks = [blob[i : i + chunk_size] for i in range(0, len(blob), chunk_size)]
    fields: dict[str, Any] = {
        "transfer": transfer,
        "kind": "update",
        "job": "sdd",
        "uid": "u1",
        "round": 1,
        "sender": "edge1",
        "total_bytes": len(blob),
        "chunk_size": chunk_size,
        "chunks": len(chunks),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "chunk_sha256": [hashlib.sha256(c).hexdigest() for c in chunks],
        "num_samples": 3,
    }
    fields.update(overrides)
    return TransferManifest(**fields)


def cut(blob: bytes, chunk_size: int) -> list[bytes]:
    return [blob[i : i + chunk_size] for i in range(0, len(blob), chunk_size)]


@dataclass
class Plan:
    """One transfer: its blob, manifest and the damage done to it (none: intact)."""

    key: str
    blob: bytes
    manifest: TransferManifest
    damage: str  # "intact", "lost-chunk", "corrupt-chunk", "no-manifest", "bad-sha"
    victim: int  # the damaged chunk's index


# Events: ("manifest", key, TransferManifest) or ("chunk", key, index, data)
Event = tuple[Any, ...]


def _corrupt(data: bytes, how: str, flip_at: int, xor: int) -> bytes:
    if how == "truncate" and len(data) > 1:
        return data[: len(data) - 1]
    if how == "extend":
        return data + b"\x00"
    at = flip_at % len(data)
    return data[:at] + bytes([data[at] ^ xor]) + data[at + 1 :]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[list[Plan], list[Event]]:
    plans: list[Plan] = []
    events: list[Event] = []
    for t in range(draw(st.integers(1, 4))):
        blob = draw(st.binary(min_size=1, max_size=200))
        size = draw(st.integers(1, 48))
        key = f"fl/jobs/sdd/rounds/1/updates/edge{t}/{t:016x}"
        damage = draw(st.sampled_from(["intact", "intact", "lost-chunk", "corrupt-chunk", "no-manifest", "bad-sha"]))
        chunks = cut(blob, size)
        victim = draw(st.integers(0, len(chunks) - 1))
        manifest = manifest_for(blob, size, f"{t:016x}")
        if damage == "bad-sha":
            # Every chunk matches its hash, the whole does not: an inconsistent manifest.
            manifest = manifest.model_copy(update={"sha256": hashlib.sha256(blob + b"x").hexdigest()})
        plans.append(Plan(key, blob, manifest, damage, victim))
        if damage != "no-manifest":
            events += [("manifest", key, manifest)] * draw(st.integers(1, 2))
        for i, data in enumerate(chunks):
            good = not (damage in ("lost-chunk", "corrupt-chunk") and i == victim)
            copies = draw(st.integers(1, 3)) if good else 0
            events += [("chunk", key, i, data)] * copies
            # At most one wrong copy per index (the assembler keeps two candidates per index while
            # the manifest is unknown: a stale retained copy and the right one).
            if (damage == "corrupt-chunk" and i == victim) or draw(st.integers(0, 4)) == 0:
                how = draw(st.sampled_from(["flip", "truncate", "extend"]))
                bad = _corrupt(data, how, draw(st.integers(0, 1000)), draw(st.integers(1, 255)))
                if bad != data:
                    events.append(("chunk", key, i, bad))
        if draw(st.booleans()):
            events.append(("chunk", key, len(chunks) + draw(st.integers(0, 3)), b"beyond"))
        if draw(st.booleans()):
            events.append(("chunk", key, victim, b""))  # an empty (deleted retained) chunk
    # Bogus manifests under keys of their own: inconsistent hashes, sizes that do not add up.
    for b in range(draw(st.integers(0, 2))):
        blob = draw(st.binary(min_size=1, max_size=100))
        size = draw(st.integers(1, 32))
        bogus = manifest_for(blob, size, f"{b + 100:016x}")
        bogus = bogus.model_copy(update={"chunk_sha256": ["0" * 64] * bogus.chunks})  # no preimage known
        key = f"fl/jobs/sdd/rounds/1/updates/bogus{b}/{b + 100:016x}"
        events.append(("manifest", key, bogus))
        events += [("chunk", key, i, data) for i, data in enumerate(cut(blob, size))]
    order = draw(st.permutations(range(len(events))))
    return plans, [events[i] for i in order]


def feed(assembler: Assembler, event: Event) -> Any:
    if event[0] == "manifest":
        return assembler.add_manifest(event[1], event[2])
    return assembler.add_chunk(event[1], event[2], event[3])


@pytest.mark.parametrize("verify_blob_sha256", [True, False])
@SETTINGS
@given(scenarios())
def test_interleaved_transfers_complete_exactly_the_intact_ones(
    verify_blob_sha256: bool, scenario: tuple[list[Plan], list[Event]]
) -> None:
    """With `verify_blob_sha256` a manifest whose whole SHA-256 is wrong never completes; without (the
    default: every chunk is verified, the whole is not hashed again) its verified chunks do, byte for byte."""
    plans, events = scenario
    by_key = {p.key: p for p in plans}
    assembler = Assembler(max_bytes=1 << 20, verify_blob_sha256=verify_blob_sha256)
    completed: list[str] = []
    for event in events:
        try:
            done = feed(assembler, event)
        except TransferError:
            assert verify_blob_sha256 and event[1] in by_key and by_key[event[1]].damage == "bad-sha"
            continue
        if done is not None:
            plan = by_key[done.key]  # a bogus key never completes
            assert done.blob == plan.blob and done.manifest == plan.manifest
            completed.append(done.key)
        assert assembler.buffered_bytes <= assembler.max_bytes
    whole = ("intact",) if verify_blob_sha256 else ("intact", "bad-sha")
    assert sorted(completed) == sorted(p.key for p in plans if p.damage in whole)
    # Whatever stays pending is a damaged transfer waiting for what it misses, or (a key may carry a
    # new transfer) a stray chunk that arrived under a completed key after its completion.
    late = {e[1] for e in events if e[0] == "chunk"}
    assert set(assembler.pending) <= {p.key for p in plans if p.damage not in whole} | late


@SETTINGS
@given(scenarios(), st.integers(1, 400), st.integers(1, 4))
def test_memory_stays_bounded_and_completions_are_right(
    scenario: tuple[list[Plan], list[Event]], max_bytes: int, max_transfers: int
) -> None:
    """With a small memory budget transfers get evicted, but nothing wrong ever completes."""
    plans, events = scenario
    by_key = {p.key: p for p in plans}
    assembler = Assembler(max_bytes=max_bytes, max_transfers=max_transfers)
    for event in events:
        try:
            done = feed(assembler, event)
        except TransferError:
            continue  # over the limit, or an inconsistent manifest
        if done is not None:
            plan = by_key[done.key]
            assert plan.damage in ("intact", "bad-sha") and done.blob == plan.blob
        assert 0 <= assembler.buffered_bytes <= max_bytes
        assert len(assembler.pending) <= max_transfers
    for key in assembler.pending:
        assembler.discard(key)
    assert assembler.buffered_bytes == 0  # the accounting balances


@SETTINGS
@given(st.binary(max_size=64))
def test_split_transfer_delivered_in_any_order_with_a_manifest_replaced(blob_tail: bytes) -> None:
    """A key reused by a second transfer: the second completes with its own bytes, never a mix."""
    first = b"A" * 40 + blob_tail
    second = b"B" * 40 + blob_tail[::-1]
    assembler = Assembler()
    key = "k"
    m1, m2 = manifest_for(first, 16, "1" * 16), manifest_for(second, 16, "2" * 16)
    assembler.add_manifest(key, m1)
    for i, data in enumerate(cut(first, 16)[:-1]):
        assert assembler.add_chunk(key, i, data) is None
    assert assembler.add_manifest(key, m2) is None
    done = None
    for i, data in enumerate(cut(second, 16)):
        done = assembler.add_chunk(key, i, data) or done
    assert done is not None and done.blob == second


# -- manifests and topics --------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**80), 2**80), st.floats(allow_nan=False), st.text(max_size=70)
)
manifest_keys = st.sampled_from(
    [
        "transfer",
        "kind",
        "job",
        "uid",
        "round",
        "sender",
        "totalBytes",
        "chunkSize",
        "chunks",
        "sha256",
        "chunkSha256",
        "numSamples",
        "final",
        "createdAt",
        "extra",
    ]
)


@SETTINGS
@given(st.binary(max_size=300))
def test_manifest_from_random_bytes_raises_wire_error_only(payload: bytes) -> None:
    try:
        manifest = manifest_from_payload(payload)
    except WireError:
        return
    assert manifest.chunks == math.ceil(manifest.total_bytes / manifest.chunk_size)


@SETTINGS
@given(
    st.binary(min_size=1, max_size=300),
    st.integers(1, 64),
    st.dictionaries(manifest_keys, st.one_of(json_scalars, st.lists(json_scalars, max_size=3)), max_size=3),
    st.lists(manifest_keys, max_size=2),
)
def test_mutated_manifests_raise_wire_error_or_are_consistent(
    blob: bytes, size: int, changes: dict[str, Any], dropped: list[str]
) -> None:
    """A real manifest with fields changed, retyped or dropped: WireError, or a consistent manifest
    that the assembler accepts or refuses with TransferError."""
    import json

    data = json.loads(manifest_for(blob, size, "ab" * 8).to_json())
    data.update(changes)
    for key in dropped:
        data.pop(key, None)
    try:
        manifest = manifest_from_payload(json.dumps(data).encode())
    except WireError:
        return
    assert len(manifest.chunk_sha256) == manifest.chunks
    assembler = Assembler(max_bytes=4096)
    try:
        done = assembler.add_manifest("k", manifest)
        for i, chunk in enumerate(cut(blob, size)):
            done = assembler.add_chunk("k", i, chunk) or done
    except TransferError:
        return
    if done is not None:
        assert done.blob == blob  # only the right bytes can complete


@SETTINGS
@given(st.text(max_size=80))
def test_transfer_key_of_random_topics_raises_topic_error_only(topic: str) -> None:
    try:
        key = transfer_key(topic)
    except TopicError:
        with pytest.raises(TopicError):
            chunk_index(topic)
        return
    assert topic.startswith(key + "/") and key
    index = chunk_index(topic)
    assert index is None or index >= 0
