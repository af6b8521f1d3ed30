"""Exceptions raised by the node runtime (the worker link: channel, script supervisor).

    NodeRuntimeError            root: everything `runtime` raises on purpose
    ├── ChannelError            a worker frame is malformed or too large; the channel is closed
    │   └── ChannelClosed       the worker channel's peer went away (EOF, broken pipe), or it was closed here
    ├── ScriptStartError        a worker script cannot be started (its log cannot be opened, exec failed)
    ├── NodeRootLockedError     another service holds the node root's lock (one service per root)
    └── SecAggError             a secure-aggregation primitive got bad input (a share, a vector, a
                                ciphertext that does not authenticate, a bound the ring cannot hold)

Contract errors (`schemas.WireError` for a frame header that is not a `WorkerFrame`) pass through
unchanged. Logging and crash-safe files raise the builtin `OSError`, as their callers expect.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ChannelClosed",
    "ChannelError",
    "NodeRootLockedError",
    "NodeRuntimeError",
    "ScriptStartError",
    "SecAggError",
]


class NodeRuntimeError(Exception):
    """Root of every error the node runtime raises deliberately."""


class ChannelError(NodeRuntimeError):
    """The worker channel cannot carry a frame (too large, unsynchronised); the channel is closed."""


class ChannelClosed(ChannelError):  # noqa: N818 - the name says what happened, like ConnectionResetError
    """The other end of the worker channel closed it (EOF, broken pipe), or it was closed locally."""


class ScriptStartError(NodeRuntimeError):
    """A worker script cannot be started; the message says why (the service turns it into a status)."""


class NodeRootLockedError(NodeRuntimeError):
    """Another process holds the node root's lock: a second service on one root must not start."""

    def __init__(self, message: str, *, path: Path, holder: str) -> None:
        super().__init__(message)
        self.path = path
        self.holder = holder


class SecAggError(NodeRuntimeError):
    """A secure-aggregation primitive cannot do what was asked; the message names the input and why."""
