"""Node requests and the data-residency ledger: what a node answers `flctl logs` and `flctl audit` with.

Requests (``fl/nodes/<node>/requests/<client>``) and replies (``fl/nodes/<node>/replies/<client>``) are
compact JSON. A request names its reply topic and a correlation id in MQTT v5 properties (ResponseTopic,
CorrelationData); the node answers only on the reply topic the request's own topic implies, so the
broker's ACL (who may write which level) vouches for both ends.

The ledger is one JSON line (`LedgerEntry`) per message a node published for a job (``dir: out``) and
per message or weights transfer it received for it (``dir: in``), kept under ``<root>/state/<job>/``.
An edge's ledger says what left the edge; the aggregator's what arrived; `flctl audit` compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

__all__ = [
    "LEDGER_FILE",
    "MAX_LOG_TAIL_LINES",
    "MAX_REPLY_BYTES",
    "LedgerClass",
    "LedgerEntry",
    "LedgerSummary",
    "NodeReply",
    "NodeRequest",
]

#: At most this many bytes of a file go into one reply (a log tail, a page of the ledger).
MAX_REPLY_BYTES = 256 * 1024
MAX_LOG_TAIL_LINES = 100_000
#: The ledger's file name under ``<root>/state/<job>/``.
LEDGER_FILE = "ledger.jsonl"

#: What a ledger line's message was, from its topic: the job's control JSON (worker status, update
#: manifest, global manifest), weight bytes (update and global chunks), an answer to an admin's
#: request, or anything else a node published under the job (which an audit flags). A node's own
#: presence and sync messages (and anything off the layout) are node-wide, in ``<root>/state/ledger.jsonl``.
LedgerClass = Literal[
    "worker-status",
    "update-manifest",
    "update-chunk",
    "global-manifest",
    "global-chunk",
    "global",
    "reply",
    "node-status",
    "sync",
    "other",
]


class _Compact(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True)

    def to_json(self) -> bytes:
        """One line of JSON (no indent): replies and ledger lines are read by machines and `jq`."""
        return self.model_dump_json(by_alias=True, exclude_none=True).encode()


class NodeRequest(_Compact):
    """What a client asks a node service for: a job's script log or a page of the job's ledger.

    `tail`: the last N lines (logs only); `offset`: the bytes from this offset on (following a log, paging
    the ledger); neither: the whole file up to `max_bytes`, from its start (ledger) or its end (logs)."""

    kind: Literal["logs", "ledger"]
    job: str = Field(min_length=1, max_length=253)
    tail: int | None = Field(default=None, ge=1, le=MAX_LOG_TAIL_LINES)
    offset: int | None = Field(default=None, ge=0)
    max_bytes: int = Field(default=MAX_REPLY_BYTES, ge=1, le=MAX_REPLY_BYTES)


class NodeReply(_Compact):
    """A node's answer. `text` is bytes [offset, nextOffset) of the file (UTF-8, bad bytes replaced);
    `size` the file's size when it was read; `truncated`: a tail was cut to the byte cap."""

    node: str
    job: str
    kind: Literal["logs", "ledger"]
    ok: bool
    error: str = ""
    path: str = ""  # where the file lives on the node (its plan-style path under the node root)
    text: str = ""
    offset: int = 0
    next_offset: int = 0
    size: int = 0
    truncated: bool = False


class LedgerEntry(_Compact):
    """One line of a node's ledger."""

    model_config = ConfigDict(
        extra="ignore", alias_generator=to_camel, populate_by_name=True, frozen=True, serialize_by_alias=True
    )

    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    dir: Literal["out", "in"]
    cls: LedgerClass = Field(alias="class")
    topic: str
    job: str  # "-" in the node-wide ledger
    uid: str | None = None
    node: str  # out: who published (the ledger's node); in: the node whose topic it came on
    round: int | None = None
    bytes: int = Field(ge=0)
    sha256: str
    retain: bool = False
    transfer: str | None = None
    chunk: int | None = None
    # an update or global manifest: its blob's size, digest and chunk digests, and the blob's tensor
    # layout ([name, dtype, shape] per tensor, from the weights header)
    blob_bytes: int | None = None
    blob_sha256: str | None = None
    chunk_sha256: list[str] | None = None
    tensors: list[tuple[str, str, list[int]]] | None = None


class LedgerSummary(_Compact):
    """A worker's ledger in its status: messages and bytes it published for the job, bytes of global
    models it received, as of that status (the status message itself is in the next one)."""

    messages: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
