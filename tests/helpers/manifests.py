"""A transfer manifest computed the plain way (the whole blob hashed, then every chunk), independently of
`schemas.manifest_for` and `broker.BlobSender`: the tests' oracle for what those must produce, and the
way to make a manifest for bytes a test crafted itself."""

from __future__ import annotations

import hashlib

from schemas import TransferManifest, WeightsKind


def chunks_of(blob: bytes, chunk_size: int) -> list[bytes]:
    return [blob[i : i + chunk_size] for i in range(0, len(blob), chunk_size)]


def reference_manifest(
    blob: bytes,
    chunk_size: int,
    *,
    transfer: str,
    job: str,
    uid: str,
    kind: WeightsKind = "update",
    round_: int = 1,
    sender: str = "edge1",
    num_samples: int = 1,
) -> TransferManifest:
    chunks = chunks_of(blob, chunk_size)
    return TransferManifest(
        transfer=transfer,
        kind=kind,
        job=job,
        uid=uid,
        round=round_,
        sender=sender,
        total_bytes=len(blob),
        chunk_size=chunk_size,
        chunks=len(chunks),
        sha256=hashlib.sha256(blob).hexdigest(),
        chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks],
        num_samples=num_samples,
    )
