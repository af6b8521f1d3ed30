"""Chunked transfer through a real local Mosquitto: the project's sender and receiver against raw paho.

For each blob size (a real weights blob, `schemas.encode_weights` of random float32 tensors) and each
repeat, in the same run and through the same broker:

- **raw paho**: one paho 2.x client (MQTT v5, QoS 1, paho's default 20 in flight) publishes the blob's
  1 MiB slices on one topic each; another paho client subscribed to them counts the bytes. The time is
  from the first publish until the subscriber holds every chunk. No hashing, no manifest, no acks by hand.
- **chunks only**: `broker.BlobSender.send` on one `broker.Session` (chunks hashed while they go out, the
  manifest last), `broker.Assembler(verify_blob_sha256=False)` on another (manual acks, every chunk's hash
  verified, written into one buffer; the whole blob's SHA-256 not checked again). The time is from `send` until the receiver holds
  the verified `CompletedTransfer`; `+decode` adds `schemas.decode_weights` of it (header hash verified,
  tensors as views on the received buffer).
- **project** (what the services run): the same with the `Assembler` default, ``verify_blob_sha256=True``:
  the receiver also checks the whole blob's SHA-256 (fed chunk by chunk as they arrive), one more pass.

Prints MB/s (1 MB = 10^6 bytes) per size, the best of `--repeats`, and the project / raw paho ratio.
Goal (issue 12): 64 MB at >= 0.7x raw paho. Everything runs on one machine (the broker, both clients), so
the figures are the whole machine's CPU, not a network's; compare ratios within one run.

    .venv/bin/python benchmarks/transfer.py                       # 1.7, 64, 256 MB, 3 repeats
    .venv/bin/python benchmarks/transfer.py --sizes 64 --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import paho.mqtt.client as mqtt  # noqa: E402
from paho.mqtt import _packet as paho_packet  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from broker import (  # noqa: E402
    Assembler,
    BlobSender,
    CompletedTransfer,
    Inbound,
    MqttSettings,
    Session,
    chunk_index,
    manifest_from_payload,
    paho_decode_publish,
    transfer_key,
)
from broker.mosquitto import BrokerConfig, LocalBroker  # noqa: E402
from runtime import configure_logging  # noqa: E402
from schemas import Topics, TransferOrigin, decode_weights, encode_weights  # noqa: E402

MiB = 1024 * 1024
CHUNK = MiB
T = Topics("flbench")
JOB, UID = "transfer", "uid-bench"


def weights_blob(megabytes: float, seed: int = 0) -> bytes:
    """A real weights blob of about `megabytes` MB: a few float32 tensors of random values."""
    floats = int(megabytes * 1e6) // 4
    rng = np.random.default_rng(seed)
    sizes = [floats // 8, floats // 4, floats - floats // 8 - floats // 4]
    arrays = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    return encode_weights(arrays, kind="update", job=JOB, round_=1, sender="edge1", num_samples=100)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- raw paho ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def stock_paho() -> Iterator[None]:
    """paho's own PUBLISH decoder for the raw baseline. Importing `broker` installs the project's
    (`broker.decode_publish`, one payload copy) for every paho client of the process, which would make the
    baseline run the project's receive path instead of stock paho-mqtt's."""
    ours = paho_packet.decode_publish
    if paho_decode_publish is not None:
        paho_packet.decode_publish = paho_decode_publish
    try:
        yield
    finally:
        paho_packet.decode_publish = ours


def paho_client(port: int, client_id: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    return client


def raw_paho(port: int, blob: bytes, run: int, timeout: float) -> float:
    """Seconds from the first publish of `blob`'s 1 MiB slices until a subscriber holds all of them."""
    count = -(-len(blob) // CHUNK)
    prefix = f"flbench/raw/{run}"
    got: list[bytes] = []
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        if len(got) == count:
            done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"raw-sub-{run}", protocol=mqtt.MQTTv5)
    sub.on_message = on_message
    sub.on_subscribe = lambda *_args: subscribed.set()
    sub.connect("127.0.0.1", port, keepalive=60)
    sub.loop_start()
    sub.subscribe(f"{prefix}/#", qos=1)
    pub = paho_client(port, f"raw-pub-{run}")
    try:
        if not subscribed.wait(10):
            raise TimeoutError("raw subscriber not subscribed")
        start = time.perf_counter()
        for i in range(count):
            pub.publish(f"{prefix}/chunks/{i}", blob[i * CHUNK : (i + 1) * CHUNK], qos=1)
        if not done.wait(timeout):
            raise TimeoutError(f"raw paho: {len(got)} of {count} chunks within {timeout} s")
        elapsed = time.perf_counter() - start
        assert sum(len(c) for c in got) == len(blob)
        return elapsed
    finally:
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()


# -- the project's path --------------------------------------------------------------------------------


def start_session(port: int, client_id: str, inbox: queue.Queue[Inbound] | None = None) -> Session:
    settings = MqttSettings(client_id=client_id, port=port, clean_start=True, session_expiry=0)
    session = Session(settings, inbox=inbox if inbox is not None else queue.Queue())
    session.start()
    if not session.wait_connected(10.0):
        raise TimeoutError(f"{client_id} did not connect")
    return session


def receiver(
    session: Session, inbox: queue.Queue[Inbound], out: queue.Queue[CompletedTransfer[str]]
) -> Callable[[], None]:
    """A thread feeding the inbox to an Assembler (as a service's inbox thread does); returns a stopper."""
    stop = threading.Event()
    asm: Assembler[str] = Assembler(max_bytes=1 << 40, verify_blob_sha256=False)
    # Transfers whose id starts with "f" go to an assembler that also re-hashes the whole blob.
    asm_rehash: Assembler[str] = Assembler(max_bytes=1 << 40, verify_blob_sha256=True)

    def run() -> None:
        while not stop.is_set():
            try:
                msg = inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            index = chunk_index(msg.topic)
            key = transfer_key(msg.topic)
            target = asm_rehash if key.rsplit("/", 1)[-1].startswith("f") else asm
            if index is None:
                done = target.add_manifest(key, manifest_from_payload(msg.payload))
            else:
                done = target.add_chunk(key, index, msg.payload)
            session.ack(msg)
            if done is not None:
                out.put(done)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(5)

    return stopper


def project(
    sender: Session,
    out: queue.Queue[CompletedTransfer[str]],
    blob: bytes,
    run: int,
    timeout: float,
    *,
    rehash: bool = False,
) -> tuple[float, float]:
    """(seconds until the verified blob is at the receiver, seconds until it is also decoded)."""
    transfer = f"f{run:015x}" if rehash else f"{run:016x}"
    origin = TransferOrigin("update", JOB, UID, 1, "edge1", 100)
    start = time.perf_counter()
    BlobSender(sender, chunk_size=CHUNK, window=16).send(
        T.update_manifest(JOB, 1, "edge1", transfer),
        lambda i: T.update_chunk(JOB, 1, "edge1", transfer, i),
        blob,
        origin,
        transfer=transfer,
        timeout=timeout,
    )
    done = out.get(timeout=timeout)
    received = time.perf_counter() - start
    _header, arrays = decode_weights(done.view)
    decoded = time.perf_counter() - start
    assert sum(a.nbytes for a in arrays) > 0 and done.manifest.total_bytes == len(blob)
    return received, decoded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=float, nargs="+", default=[1.7, 64, 256], help="blob sizes in MB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    configure_logging("bench", "transfer", "WARNING")
    with tempfile.TemporaryDirectory(prefix="fl-bench-transfer-") as tmp:
        cfg = BrokerConfig(free_port(), data_dir=Path(tmp) / "data", persistence=False, max_packet_size=4 * MiB)
        with LocalBroker(cfg, tmp).start() as local:
            port = local.port
            inbox: queue.Queue[Inbound] = queue.Queue()
            rx = start_session(port, "bench-aggregator", inbox)
            rx.subscribe(T.all_updates())
            rx.barrier(10.0)
            out: queue.Queue[CompletedTransfer[str]] = queue.Queue()
            stop_rx = receiver(rx, inbox, out)
            tx = start_session(port, "bench-edge1")
            rows = []
            run = 0
            try:
                for size in args.sizes:
                    blob = weights_blob(size)
                    raw_t, proj_t, dec_t, re_t = [], [], [], []
                    for _ in range(args.repeats):
                        run += 1
                        with stock_paho():
                            raw_t.append(raw_paho(port, blob, run, args.timeout))
                        run += 1
                        received, decoded = project(tx, out, blob, run, args.timeout)
                        proj_t.append(received)
                        dec_t.append(decoded)
                        run += 1
                        re_t.append(project(tx, out, blob, run, args.timeout, rehash=True)[0])
                    mb = len(blob) / 1e6
                    rows.append((mb, raw_t, proj_t, dec_t, re_t))
                    del blob
            finally:
                stop_rx()
                tx.stop(timeout=2.0)
                rx.stop(timeout=2.0)
    print(f"chunk {CHUNK // 1024} KiB; MB/s of the best of {args.repeats} (median in brackets); cpus {os.cpu_count()}")
    print("raw paho: stock paho-mqtt (its own PUBLISH decoder); the project: broker.decode_publish")
    print(f"{'MB':>7} {'raw paho':>14} {'chunks only':>14} {'+decode':>14} {'project':>14}  ratio best (median)")
    for mb, raw_t, proj_t, dec_t, re_t in rows:
        cells = " ".join(f"{mb / min(t):6.0f} ({mb / statistics.median(t):5.0f})" for t in (raw_t, proj_t, dec_t, re_t))
        ratio = f"{min(raw_t) / min(proj_t):.2f} ({statistics.median(raw_t) / statistics.median(proj_t):.2f})"
        ratio_re = f"{min(raw_t) / min(re_t):.2f} ({statistics.median(raw_t) / statistics.median(re_t):.2f})"
        print(f"{mb:7.1f} {cells}  chunks only {ratio}, project (blob hash checked) {ratio_re}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
