"""The worker channel: a local stream socket pair between a node service and the script it runs.

Frame layout (all lengths big-endian)::

    u32 header length | header: schemas.WorkerFrame JSON | [ u64 body length | body ]   (body iff hasBody)

The service creates the pair with `spawn_channel_pair`, starts the script with the child's fd in
``pass_fds`` and in the environment (``FL_WORKER_FD``), then closes its copy of the child fd
(`WorkerChannel.close_child_fd`) so that the script's exit shows up as EOF (`ChannelClosed`)::

    parent, child_fd = spawn_channel_pair()
    proc = subprocess.Popen(cmd, pass_fds=(child_fd,), env={**env, "FL_WORKER_FD": str(child_fd)})
    parent.close_child_fd()

    chan = WorkerChannel.from_fd(int(os.environ["FL_WORKER_FD"]))   # in the script

`send` may be called from several threads (a lock around the whole frame); `recv` from one thread at
a time. `recv(timeout)` keeps a partially received frame across timeouts, so a timeout never loses
or splits a frame. The socket stays blocking; readiness is polled with a selector, so a receive
timeout never affects a concurrent send.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import struct
import threading
import time

import pydantic

from runtime._errors import ChannelClosed, ChannelError
from schemas import WireError, WorkerFrame

__all__ = ["MAX_BODY", "MAX_HEADER", "WorkerChannel", "spawn_channel_pair"]

MAX_HEADER = 1024 * 1024  # 1 MiB of JSON is far beyond any legitimate frame header
MAX_BODY = 2 * 1024 * 1024 * 1024  # 2 GiB
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_READ_CHUNK = 1024 * 1024


class WorkerChannel:
    """One end of the worker channel. Use `spawn_channel_pair` (service) or `from_fd` (script)."""

    def __init__(self, sock: socket.socket, *, child_fd: int | None = None) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._child_fd = child_fd
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ)
        self._closed = False
        # Receive state of the frame in progress: which part we read, into what, how far.
        self._stage = 0  # 0: header length, 1: header, 2: body length, 3: body
        self._buf = bytearray(_U32.size)
        self._got = 0
        self._frame: WorkerFrame | None = None

    @classmethod
    def from_fd(cls, fd: int) -> WorkerChannel:
        """The script's end, from the fd its service passed (``FL_WORKER_FD``)."""
        try:
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ChannelClosed(f"worker channel fd {fd} is not an open socket: {exc}") from exc
        return cls(sock)

    def fileno(self) -> int:
        return self._sock.fileno()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- sending -----------------------------------------------------------------------------------

    def send(self, frame: WorkerFrame, body: bytes | None = None) -> None:
        """Send one frame; `body` (a weights blob) follows when given, and sets ``hasBody``."""
        if (body is not None) != frame.has_body:
            frame = frame.model_copy(update={"has_body": body is not None})
        header = frame.to_json()
        if len(header) > MAX_HEADER:
            raise ChannelError(f"worker frame header of {len(header)} bytes exceeds {MAX_HEADER}")
        parts = [_U32.pack(len(header)), header]
        if body is not None:
            if len(body) > MAX_BODY:
                raise ChannelError(f"worker frame body of {len(body)} bytes exceeds {MAX_BODY}")
            parts.append(_U64.pack(len(body)))
        prefix = b"".join(parts)
        with self._send_lock:
            if self._closed:
                raise ChannelClosed("worker channel is closed")
            try:
                self._sock.sendall(prefix)
                if body:
                    self._sock.sendall(body)
            except OSError as exc:  # BrokenPipeError, ConnectionResetError, EBADF after close
                raise ChannelClosed(f"worker channel peer went away while sending {frame.type!r}: {exc}") from exc

    # -- receiving ---------------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> tuple[WorkerFrame, bytes | None]:
        """The next frame and its body (None without one). Raises ChannelClosed on EOF, TimeoutError if no
        whole frame arrived within `timeout` seconds (the partial frame is kept for the next call)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._recv_lock:
            while True:
                if self._closed:
                    raise ChannelClosed("worker channel is closed")
                if self._got < len(self._buf):
                    self._fill(deadline)
                    continue
                result = self._advance()
                if result is not None:
                    return result

    def _fill(self, deadline: float | None) -> None:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        try:
            ready = self._selector.select(remaining)
        except (OSError, ValueError) as exc:  # closed by another thread while waiting
            raise ChannelClosed(f"worker channel closed while receiving: {exc}") from exc
        if not ready:
            raise TimeoutError(
                f"no complete worker frame within the timeout ({self._got}/{len(self._buf)} bytes of part {self._stage})"
            )
        view = memoryview(self._buf)[self._got : self._got + _READ_CHUNK]
        try:
            n = self._sock.recv_into(view)
        except BlockingIOError:
            return
        except OSError as exc:
            raise ChannelClosed(f"worker channel read failed: {exc}") from exc
        if n == 0:
            mid_frame = self._stage != 0 or self._got != 0
            raise ChannelClosed(
                "worker channel closed by the peer" + (" in the middle of a frame" if mid_frame else "")
            )
        self._got += n

    def _expect(self, stage: int, size: int) -> None:
        self._stage, self._buf, self._got = stage, bytearray(size), 0

    def _advance(self) -> tuple[WorkerFrame, bytes | None] | None:
        """The current part is complete: move to the next one; return the frame when it is whole."""
        if self._stage == 0:
            self._expect_length(_U32, MAX_HEADER, "header", stage=1)
            return None
        if self._stage == 1:
            try:
                frame = WorkerFrame.model_validate_json(bytes(self._buf))
            except pydantic.ValidationError as exc:
                self._fail()
                raise WireError(
                    "worker frame",
                    f"malformed header ({exc.error_count()} problems: {exc.errors()[0]['msg']}); channel closed",
                ) from exc
            if not frame.has_body:
                self._expect(0, _U32.size)
                return frame, None
            self._frame = frame
            self._expect(2, _U64.size)
            return None
        if self._stage == 2:
            self._expect_length(_U64, MAX_BODY, "body", stage=3)
            return None
        header, body = self._frame, bytes(self._buf)
        if header is None:  # stage 3 is only entered with a header; never happens
            raise ChannelError("worker channel receive state lost its frame header")
        self._frame = None
        self._expect(0, _U32.size)
        return header, body

    def _expect_length(self, prefix: struct.Struct, limit: int, part: str, *, stage: int) -> None:
        """The current part is the length `prefix` of `part`: expect that many bytes in `stage`, if within `limit`."""
        (length,) = prefix.unpack(self._buf)
        if length > limit:
            self._fail()
            raise ChannelError(f"worker frame {part} of {length} bytes exceeds {limit}; channel closed")
        self._expect(stage, length)

    def _fail(self) -> None:
        """A framing error leaves the stream unsynchronised: nothing after it can be trusted."""
        self.close()

    # -- closing -----------------------------------------------------------------------------------

    def close_child_fd(self) -> None:
        """Close the parent's copy of the child's fd; call right after the child process started."""
        fd, self._child_fd = self._child_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Close this end (and the child's fd if still held). Idempotent."""
        self.close_child_fd()
        if self._closed:
            return
        self._closed = True
        try:
            self._selector.close()
        finally:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()

    def __enter__(self) -> WorkerChannel:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def spawn_channel_pair() -> tuple[WorkerChannel, int]:
    """A connected pair: the service's `WorkerChannel` and the child's raw, inheritable fd.

    Pass the fd in ``pass_fds`` and ``FL_WORKER_FD``; once the child started, call
    ``parent.close_child_fd()`` (also done by ``parent.close()``).
    """
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child.set_inheritable(True)
    child_fd = child.detach()
    return WorkerChannel(parent, child_fd=child_fd), child_fd
