"""The data-residency ledger of a node: one JSON line per message it published or received for a job.

``<root>/state/<job>/ledger.jsonl`` (`schemas.LedgerEntry` per line). What belongs to no job of the node
(its presence, its session's sync messages, answers refusing a job it never ran, anything off the topic
layout) goes to the node-wide ``<root>/state/ledger.jsonl``: every byte the session publishes is in one
of them. On an edge the session's publish
observer (`Ledger.published`) records every message the service hands to the broker, whoever in the
service published it, plus each global model it received (`received_transfer`); on the aggregator the
service records what arrived on the edges' topics (`received`) and the global models it published
(`published_transfer`). `flctl audit` reads both ledgers (over MQTT, `NodeRequest` kind ``ledger``)
and compares them.

Thread-safe: the edge's logic thread and its uploader thread both publish. Lines are appended and
flushed, not fsynced: the ledger is an account, not a recovery log, and a crash loses at most the
lines of the messages in flight, which the broker never confirmed either. Each ledger file stays open
between lines (opening it, and making its folder, for every message was a tenth of the aggregator's
logic thread at 100 edges); a file unlinked meanwhile (a deleted job's folder) is opened afresh.

A caller that already hashed a payload (the aggregator's transfer intake verifies every chunk against
its manifest) hands the digest in (`received(sha256=...)`), and a manifest it already parsed
(`manifest=`): each received byte is hashed once per node, not once for the ledger and once for the
transfer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import ValidationError
from structlog.typing import FilteringBoundLogger

from runtime._logging import get_logger
from schemas import (
    LEDGER_FILE,
    Channel,
    Kind,
    LedgerClass,
    LedgerEntry,
    LedgerSummary,
    NodeReply,
    ParsedTopic,
    TopicError,
    Topics,
    TransferManifest,
    WireError,
    check_name,
    read_header,
)

__all__ = ["Ledger", "blob_layout"]

Layout = list[tuple[str, str, list[int]]]

_CLASSES: dict[Channel, LedgerClass] = {
    Channel.WORKER_STATUS: "worker-status",
    Channel.UPDATE_MANIFEST: "update-manifest",
    Channel.UPDATE_CHUNK: "update-chunk",
    Channel.GLOBAL_MANIFEST: "global-manifest",
    Channel.GLOBAL_CHUNK: "global-chunk",
    Channel.NODE_REPLY: "reply",
    Channel.NODE_STATUS: "node-status",
    Channel.SYNC: "sync",
}
NODE_WIDE = "-"  # the job of a node-wide line
_OPEN_FILES = 16  # ledger files kept open (one per job a node runs at once, and the node-wide one)


def blob_layout(blob: bytes) -> Layout | None:
    """The tensor layout of a weights blob, from its header ([name, dtype, shape] per tensor); None if unreadable."""
    try:
        header, _ = read_header(blob)
    except WireError:
        return None
    return [(t.name, t.dtype, list(t.shape)) for t in header.tensors]


class Ledger:
    """One node's ledgers, one file per job under `state_dir`; `uid_of(job)` names the job's current run."""

    def __init__(
        self,
        state_dir: Path,
        node: str,
        topics: Topics,
        uid_of: Callable[[str], str | None],
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.node = node
        self.topics = topics
        self._uid_of = uid_of
        self._log = log or get_logger()
        self._lock = threading.Lock()
        self._layouts: dict[str, Layout] = {}  # transfer -> its blob's layout, until its manifest goes out
        self._summaries: dict[tuple[str, str | None], LedgerSummary] = {}
        self._paths: dict[str, Path] = {}
        self._files: OrderedDict[Path, BinaryIO] = OrderedDict()  # open for appending, least recently used first
        # A ledger dropped without `close` (a test's, a stopped service's) closes its files with it.
        weakref.finalize(self, _close_all, self._files)

    def path(self, job: str) -> Path:
        known = self._paths.get(job)
        if known is None:  # the name is checked once per job, not once per line
            known = self._paths[job] = self.state_dir / check_name(job, "job name") / LEDGER_FILE
        return known

    # -- what the node does ------------------------------------------------------------------------

    def note_blob(self, transfer: str, blob: bytes) -> None:
        """The blob a transfer about to be published carries: its manifest's line gets the blob's layout."""
        layout = blob_layout(blob)
        if layout is not None:
            with self._lock:
                self._layouts[transfer] = layout

    def published(self, topic: str, payload: bytes, retain: bool) -> None:
        """A message this node handed to the broker (`broker.PublishObserver`); job traffic and replies only."""
        try:
            parsed = self.topics.parse(topic)
        except TopicError:
            parsed = None
        job = self._job_of(parsed, payload)
        if parsed is None or job is None:
            # presence, the session's own sync topic, anything off the layout: node-wide, not a job's
            cls: LedgerClass = _CLASSES.get(parsed.channel, "other") if parsed is not None else "other"
            line = LedgerEntry(
                dir="out",
                cls=cls,
                topic=topic,
                job=NODE_WIDE,
                node=self.node,
                retain=retain,
                bytes=len(payload),
                sha256=hashlib.sha256(payload).hexdigest(),
            )
            self._append(line, node_wide=True)
            return
        cls = _CLASSES.get(parsed.channel, "other")
        fields = self._describe(parsed, cls, payload)
        uid = fields.pop("uid", None) or self._uid_of(job)
        entry = LedgerEntry(dir="out", cls=cls, topic=topic, job=job, uid=uid, node=self.node, retain=retain, **fields)
        # An answer about a job this node never ran (a refusal) is node-wide: no folder for a name anyone chose.
        self._append(entry, node_wide=cls == "reply" and uid is None)

    def received(
        self,
        topic: str,
        payload: bytes,
        *,
        job: str,
        uid: str | None,
        node: str,
        sha256: str | None = None,
        manifest: TransferManifest | None = None,
        parsed: ParsedTopic | None = None,
    ) -> None:
        """A message that arrived on `node`'s topic of `job` (the aggregator's side of the account).

        `sha256`: the payload's SHA-256 in hex, when the caller computed it already (not computed again);
        `manifest`: the payload parsed, when it is a manifest the caller parsed already; `parsed`: the topic
        parsed (`topics.parse(topic)`), likewise."""
        if parsed is None:
            try:
                parsed = self.topics.parse(topic)
            except TopicError:
                return
        cls = _CLASSES.get(parsed.channel, "other")
        fields = self._describe(parsed, cls, payload, sha256=sha256, manifest=manifest)
        uid = fields.pop("uid", None) or uid
        self._append(LedgerEntry(dir="in", cls=cls, topic=topic, job=job, uid=uid, node=node, **fields))

    def received_transfer(self, manifest: TransferManifest, blob: bytes, *, topic: str) -> None:
        """A whole weights transfer that arrived (an edge's global model of a round)."""
        self._transfer("in", manifest, blob, topic)

    def published_transfer(self, manifest: TransferManifest, blob: bytes, *, topic: str) -> None:
        """A whole weights transfer this node published (the aggregator's global model of a round)."""
        self._transfer("out", manifest, blob, topic)

    def summary(self, job: str, uid: str | None) -> LedgerSummary:
        """Messages and bytes this node published for run `uid` of `job`, and bytes of transfers it received."""
        with self._lock:
            return self._summary(job, uid)

    # -- helpers -----------------------------------------------------------------------------------

    def _transfer(self, direction: str, m: TransferManifest, blob: bytes, topic: str) -> None:
        self._append(
            LedgerEntry(
                dir="in" if direction == "in" else "out",
                cls="global",
                topic=topic,
                job=m.job,
                uid=m.uid,
                node=m.sender,
                round=m.round,
                bytes=len(blob),
                sha256=m.sha256,
                transfer=m.transfer,
                blob_bytes=m.total_bytes,
                blob_sha256=m.sha256,
                tensors=blob_layout(blob),
            )
        )

    def _job_of(self, parsed: ParsedTopic | None, payload: bytes) -> str | None:
        if parsed is None:
            return None
        if parsed.channel is Channel.NODE_REPLY:
            try:
                return NodeReply.model_validate_json(payload).job
            except ValidationError:
                return None
        return parsed.name if parsed.kind is Kind.JOB else None

    def _describe(
        self,
        parsed: ParsedTopic,
        cls: LedgerClass,
        payload: bytes,
        *,
        sha256: str | None = None,
        manifest: TransferManifest | None = None,
    ) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "bytes": len(payload),
            "sha256": sha256 or hashlib.sha256(payload).hexdigest(),
            "round": parsed.round,
            "transfer": parsed.transfer,
            "chunk": parsed.chunk,
        }
        if cls == "worker-status" and payload:
            # The status names its run and round: a retained status of an earlier run is that run's.
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                status = json.loads(payload)
                fields["round"] = int(status.get("round", 0))
                fields["uid"] = status.get("uid")
        elif cls in ("update-manifest", "global-manifest") and payload:
            try:
                m = manifest or TransferManifest.model_validate_json(payload)
            except ValidationError:
                return fields
            with self._lock:
                layout = self._layouts.pop(m.transfer, None)
            fields.update(
                uid=m.uid,
                blob_bytes=m.total_bytes,
                blob_sha256=m.sha256,
                chunk_sha256=list(m.chunk_sha256),
                tensors=layout,
            )
        return fields

    def _append(self, entry: LedgerEntry, *, node_wide: bool = False) -> None:
        line = entry.to_json() + b"\n"
        with self._lock:
            summary = self._summary(entry.job, entry.uid)
            try:
                f = self._file(self.state_dir / LEDGER_FILE if node_wide else self.path(entry.job))
                f.write(line)
                f.flush()  # a whole line for a reader (`flctl audit`) at once
            except (OSError, ValueError) as exc:
                self._log.error("ledger line not written", job=entry.job, topic=entry.topic, error=str(exc))
                return
            if not node_wide:
                self._summaries[(entry.job, entry.uid)] = _add(summary, entry)

    def close(self) -> None:
        """Close the ledger files kept open (a later line opens its file again)."""
        with self._lock:
            _close_all(self._files)

    def _file(self, path: Path) -> BinaryIO:
        """`path` open for appending (lock held): the one kept open, unless its file was unlinked since."""
        f = self._files.get(path)
        if f is not None:
            if os.fstat(f.fileno()).st_nlink > 0:
                self._files.move_to_end(path)
                return f
            del self._files[path]
            with contextlib.suppress(OSError):
                f.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        f = path.open("ab")
        self._files[path] = f
        while len(self._files) > _OPEN_FILES:
            with contextlib.suppress(OSError):
                self._files.popitem(last=False)[1].close()
        return f

    def _summary(self, job: str, uid: str | None) -> LedgerSummary:
        """The running summary (lock held); read from the file the first time (a restarted node)."""
        key = (job, uid)
        known = self._summaries.get(key)
        if known is not None:
            return known
        summary = LedgerSummary()
        with contextlib.suppress(OSError, ValueError):
            for raw in self.path(job).read_bytes().splitlines():
                try:
                    entry = LedgerEntry.model_validate_json(raw)
                except ValidationError:
                    continue
                if entry.uid == uid:
                    summary = _add(summary, entry)
        self._summaries[key] = summary
        return summary


def _close_all(files: OrderedDict[Path, BinaryIO]) -> None:
    while files:
        with contextlib.suppress(OSError):
            files.popitem()[1].close()


def _add(summary: LedgerSummary, entry: LedgerEntry) -> LedgerSummary:
    if entry.dir == "out" and entry.cls != "global":
        return summary.model_copy(update={"messages": summary.messages + 1, "bytes_up": summary.bytes_up + entry.bytes})
    if entry.dir == "in" and entry.cls == "global":
        return summary.model_copy(update={"bytes_down": summary.bytes_down + entry.bytes})
    return summary
