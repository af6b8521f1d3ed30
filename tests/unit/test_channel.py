"""The worker channel: framing, partial reads, EOF, limits, concurrent senders, a real child process."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import ChannelClosed, ChannelError, WorkerChannel, spawn_channel_pair
from schemas import WireError, WorkerFrame

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pair() -> Iterator[tuple[WorkerChannel, WorkerChannel]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    left, right = WorkerChannel(a), WorkerChannel(b)
    try:
        yield left, right
    finally:
        left.close()
        right.close()


@pytest.fixture
def raw_pair() -> Iterator[tuple[socket.socket, WorkerChannel]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    chan = WorkerChannel(b)
    try:
        yield a, chan
    finally:
        a.close()
        chan.close()


def encode(frame: WorkerFrame, body: bytes | None = None) -> bytes:
    header = frame.model_copy(update={"has_body": body is not None}).to_json()
    data = struct.pack(">I", len(header)) + header
    if body is not None:
        data += struct.pack(">Q", len(body)) + body
    return data


def test_frames_with_and_without_body_round_trip(pair: tuple[WorkerChannel, WorkerChannel]) -> None:
    """A frame without a body and one with a body arrive intact and in order."""
    left, right = pair
    body = os.urandom(3_000_000)  # far more than the socket buffer: sent while the other end reads

    def send() -> None:
        left.send(WorkerFrame(type="hello", num_samples=12), body)
        left.send(WorkerFrame(type="stop"))

    sender = threading.Thread(target=send)
    sender.start()

    frame, got = right.recv(timeout=5.0)
    assert (frame.type, frame.num_samples, frame.has_body, got) == ("hello", 12, True, body)
    frame, got = right.recv(timeout=5.0)
    assert (frame.type, frame.has_body, got) == ("stop", False, None)
    sender.join(5.0)


def test_partial_frame_survives_a_timeout(raw_pair: tuple[socket.socket, WorkerChannel]) -> None:
    """recv(timeout) raises TimeoutError on a half-received frame and returns the whole frame once the rest arrives."""
    raw, chan = raw_pair
    data = encode(WorkerFrame(type="update", round=3), b"weights" * 1000)
    raw.sendall(data[:3])
    with pytest.raises(TimeoutError):
        chan.recv(timeout=0.05)
    raw.sendall(data[3:40])
    with pytest.raises(TimeoutError):
        chan.recv(timeout=0.05)

    raw.sendall(data[40:])

    frame, body = chan.recv(timeout=5.0)
    assert (frame.type, frame.round, body) == ("update", 3, b"weights" * 1000)


def test_eof_raises_channel_closed(raw_pair: tuple[socket.socket, WorkerChannel]) -> None:
    """EOF between frames, and in the middle of one, raises ChannelClosed."""
    raw, chan = raw_pair
    raw.sendall(encode(WorkerFrame(type="saved"))[:5])
    raw.close()

    with pytest.raises(ChannelClosed, match="middle of a frame"):
        chan.recv(timeout=5.0)


def test_send_after_peer_closed_raises_channel_closed(pair: tuple[WorkerChannel, WorkerChannel]) -> None:
    """Sending to a peer that closed its end raises ChannelClosed, not an OSError."""
    left, right = pair
    right.close()

    with pytest.raises(ChannelClosed):
        for _ in range(100):  # the first writes may still land in the socket buffer
            left.send(WorkerFrame(type="train"), b"x" * 65536)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (struct.pack(">I", 1024 * 1024 + 1), "header of 1048577 bytes"),
        (encode(WorkerFrame(type="hello"), b"")[:-8] + struct.pack(">Q", 2 * 1024**3 + 1), "body of 2147483649 bytes"),
    ],
    ids=["header", "body"],
)
def test_oversized_frames_raise_broker_error(
    raw_pair: tuple[socket.socket, WorkerChannel], data: bytes, message: str
) -> None:
    """A header over 1 MiB or a body over 2 GiB is refused with ChannelError, and the channel is closed."""
    raw, chan = raw_pair
    raw.sendall(data)

    with pytest.raises(ChannelError, match=message):
        chan.recv(timeout=5.0)
    assert chan.closed


def test_malformed_header_raises_wire_error(raw_pair: tuple[socket.socket, WorkerChannel]) -> None:
    """A header that is not a WorkerFrame raises schemas.WireError."""
    raw, chan = raw_pair
    header = b'{"type": "dance"}'
    raw.sendall(struct.pack(">I", len(header)) + header)

    with pytest.raises(WireError, match="malformed header"):
        chan.recv(timeout=5.0)


def test_concurrent_senders_never_interleave_frames(pair: tuple[WorkerChannel, WorkerChannel]) -> None:
    """Frames sent from several threads at once arrive whole."""
    left, right = pair
    per_thread, threads = 30, 4
    bodies = {(t, i): bytes([t]) * (10_000 + i) for t in range(threads) for i in range(per_thread)}

    def send_all(t: int) -> None:
        for i in range(per_thread):
            left.send(WorkerFrame(type="update", round=t, num_samples=i), bodies[(t, i)])

    workers = [threading.Thread(target=send_all, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    received = [right.recv(timeout=10.0) for _ in range(per_thread * threads)]
    for w in workers:
        w.join(10.0)

    assert all(body == bodies[(f.round, f.num_samples or 0)] for f, body in received)
    assert len({(f.round, f.num_samples) for f, _ in received}) == per_thread * threads


CHILD = """
import os
from runtime import WorkerChannel
from schemas import WorkerFrame
chan = WorkerChannel.from_fd(int(os.environ["FL_WORKER_FD"]))
frame, body = chan.recv(timeout=10)
chan.send(WorkerFrame(type="update", round=frame.round, num_samples=len(body)), body[::-1])
"""


def test_child_process_talks_over_the_pair_and_its_exit_is_eof() -> None:
    """A child started with the child fd exchanges frames; after it exits the parent sees ChannelClosed."""
    parent, child_fd = spawn_channel_pair()
    env = {**os.environ, "FL_WORKER_FD": str(child_fd), "PYTHONPATH": str(REPO)}
    with parent:
        proc = subprocess.Popen([sys.executable, "-c", CHILD], pass_fds=(child_fd,), env=env)
        parent.close_child_fd()
        try:
            parent.send(WorkerFrame(type="train", round=4), b"abc")
            frame, body = parent.recv(timeout=10.0)
            assert (frame.type, frame.round, frame.num_samples, body) == ("update", 4, 3, b"cba")
            with pytest.raises(ChannelClosed):
                parent.recv(timeout=10.0)
        finally:
            assert proc.wait(10.0) == 0
