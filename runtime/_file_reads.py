"""Reading a bounded part of a node's file for a client: a log's last lines, or the bytes after an offset.

What `flctl logs` and `flctl audit` get from a node (`answer_request`): never more than the request's
byte cap (at most `schemas.MAX_REPLY_BYTES`), cut at a line end so no line (or UTF-8 character) is
split; bad bytes are replaced, so the answer is always valid JSON text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from schemas import NodeReply, NodeRequest

__all__ = ["JobFiles", "answer_request", "read_from", "read_tail"]

_BLOCK = 64 * 1024


@dataclass(frozen=True)
class Piece:
    text: str
    offset: int
    next_offset: int
    size: int
    truncated: bool = False


@dataclass(frozen=True)
class JobFiles:
    """Where one job's files live on a node: its script's log and its ledger (and their plan-style paths)."""

    log: Path
    ledger: Path
    log_url: str = ""
    ledger_url: str = ""


def read_tail(path: Path, lines: int, max_bytes: int) -> Piece:
    """The last `lines` lines of `path`, at most `max_bytes` bytes (then its last whole lines only)."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = size
        data = b""
        # Read backwards block by block until enough line ends are in (one more: the start of the first line).
        while start > 0 and data.count(b"\n", 0, max(len(data) - 1, 0)) < lines and size - start < max_bytes + 1:
            step = min(_BLOCK, start)
            start -= step
            f.seek(start)
            data = f.read(step) + data
    body = data[:-1] if data.endswith(b"\n") else data
    cut = body.split(b"\n")
    keep = cut[-lines:]
    text = b"\n".join(keep) + (b"\n" if data.endswith(b"\n") else b"")
    truncated = False
    if len(text) > max_bytes:
        text = text[-max_bytes:]
        nl = text.find(b"\n")
        if 0 <= nl < len(text) - 1:
            text = text[nl + 1 :]
        truncated = True
    return Piece(text.decode("utf-8", "replace"), size - len(text), size, size, truncated)


def read_from(path: Path, offset: int, max_bytes: int) -> Piece:
    """Bytes of `path` from `offset`, at most `max_bytes`, ending at a line end unless one line is longer.

    A file shorter than `offset` was replaced (a new run's log): read it from its start."""
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if offset > size:
            offset = 0
        f.seek(offset)
        data = f.read(max_bytes)
    if offset + len(data) < size:
        nl = data.rfind(b"\n")
        if nl >= 0:
            data = data[: nl + 1]
    return Piece(data.decode("utf-8", "replace"), offset, offset + len(data), size)


def answer_request(request: NodeRequest, node: str, files: JobFiles | None) -> NodeReply:
    """This node's answer to `request`; `files` is None when the node runs no part of the job."""
    base = {"node": node, "job": request.job, "kind": request.kind}
    if files is None:
        return NodeReply(**base, ok=False, error=f"node {node} runs no part of job {request.job}")
    path, url = (files.log, files.log_url) if request.kind == "logs" else (files.ledger, files.ledger_url)
    try:
        if request.offset is not None:
            piece = read_from(path, request.offset, request.max_bytes)
        elif request.kind == "logs":
            piece = read_tail(path, request.tail or 100, request.max_bytes)
        else:
            piece = read_from(path, 0, request.max_bytes)
    except FileNotFoundError:
        what = "log" if request.kind == "logs" else "ledger"
        return NodeReply(**base, ok=True, path=url, error=f"no {what} yet on {node}")
    except OSError as exc:
        return NodeReply(**base, ok=False, path=url, error=f"cannot read {url or path}: {exc.strerror or exc}")
    return NodeReply(
        **base,
        ok=True,
        path=url,
        text=piece.text,
        offset=piece.offset,
        next_offset=piece.next_offset,
        size=piece.size,
        truncated=piece.truncated,
    )
