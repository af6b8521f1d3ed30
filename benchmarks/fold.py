"""The aggregator's per-update cost on a 100 MB model, against numpy measured in the same run.

Three figures (issue 12's goals in brackets):

- ``fold``: `FedAvg.fold_in_place` (the engine's fold: weighted, in place, block by block) of a 25M-parameter
  float32 update into its float64 accumulator, against numpy's in-place float64 add of the same update
  (``np.add(acc, update, out=acc)``, unweighted, the least a fold can do). Ratio = numpy time / fold time
  [>= 0.5x], the median over pairs timed back to back (the load of a shared machine moves within seconds). The pure `FedAvg.fold` (three model-sized allocations per update) is shown for reference.
- ``path``: the whole per-update path as the engine runs it for a transfer the intake assembled:
  `engine.decode_checked` (header read, views on the blob, every value checked finite), the layout check,
  `Strategy.check`, `fold_in_place`; against numpy decoding the same blob (``np.frombuffer``) and adding it
  in place. Ratio = path time / numpy time [<= 2x]. The path before issue 12 (`decode_weights`: a copy and
  a hash of the payload, `np.isfinite(...).all()`, the pure fold) is shown for reference.
- ``memory``: ten concurrent 100 MB uploads through the real intake (`engine.Job` of eleven edges, so the
  round stays open; a port whose spool and spills are files under ``.bench/fold/``): every upload's chunks
  round-robin (each a fresh bytes object, as from the network), then the manifests, then the chunks the
  intake asks for again. Peak Python memory (tracemalloc: numpy's buffers included) above what the open
  round held before (its model, 1x, and, one update folded already, its float64 accumulator, 2x), in model
  sizes [<= 3x + a constant].

    .venv/bin/python benchmarks/fold.py
    .venv/bin/python benchmarks/fold.py --parameters 2500000 --edges 4   # a quick look
    .venv/bin/python benchmarks/fold.py --skip-fold --transfer-memory 1099511627776   # no spill

Not a test: about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cloud_aggregator import FedAvg  # noqa: E402
from cloud_aggregator.engine import JobSettings, decode_checked  # noqa: E402
from cloud_aggregator.testing import chunks_of, make_transfer  # noqa: E402
from runtime import configure_logging  # noqa: E402
from schemas import decode_weights, read_header  # noqa: E402
from tests.helpers.fleet import UID, DiskPort, fleet_job  # noqa: E402

Arrays = list[npt.NDArray[Any]]


def shapes_for(parameters: int) -> list[int]:
    """A model of `parameters` float32 values in four tensors (one large, as a dense layer's kernel)."""
    big = parameters * 8 // 10
    rest = parameters - big
    return [big, rest // 2, rest - rest // 2 - 1000, 1000]


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm: page faults, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired(baseline: Callable[[], object], measured: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """Both timed back to back, `repeats` times: their median times and the median of the per-pair ratios
    measured / baseline (the machine's load moves within seconds; a pair sees about the same load)."""
    baseline()
    measured()
    pairs = []
    for _ in range(repeats):
        start = time.perf_counter()
        baseline()
        middle = time.perf_counter()
        measured()
        pairs.append((middle - start, time.perf_counter() - middle))
    return (
        statistics.median(b for b, _ in pairs),
        statistics.median(m for _, m in pairs),
        statistics.median(m / b for b, m in pairs),
    )


def bench_fold(update: Arrays, repeats: int) -> dict[str, float]:
    strategy = FedAvg()
    layout = tuple((f"w{i}", "float32", a.shape) for i, a in enumerate(update))
    accumulators = [np.zeros(a.shape) for a in update]
    state = strategy.fold_in_place(strategy.begin(layout), update, 7)
    frozen = state.snapshot()

    def numpy_add() -> None:
        for acc, a in zip(accumulators, update, strict=True):
            np.add(acc, a, out=acc)

    numpy_s, fold_s, ratio = paired(numpy_add, lambda: strategy.fold_in_place(state, update, 7), repeats)
    return {
        "numpy": numpy_s,
        "in_place": fold_s,
        "ratio": 1.0 / ratio,
        "pure": timed(lambda: strategy.fold(frozen, update, 7), max(1, repeats // 2)),
    }


def bench_path(update: Arrays, repeats: int) -> dict[str, float]:
    strategy = FedAvg()
    manifest, blob = make_transfer(
        update, kind="update", job="j", uid="u" * 32, round_=1, sender="edge1", num_samples=7, chunk_size=1 << 20
    )
    header, offset = read_header(blob)
    layout = header.layout()
    state = strategy.fold_in_place(strategy.begin(layout), update, 7)
    frozen = state.snapshot()
    accumulators = [np.zeros(a.shape) for a in update]

    # The intake's assembler hashes the tensor bytes as the chunks arrive (`payload_at`: the receipt, timed in
    # benchmarks/transfer.py, where the manifest's whole-blob hash was before); decoding compares that digest.
    payload_sha256 = hashlib.sha256(memoryview(blob)[offset:]).hexdigest()

    def engine() -> None:
        got, arrays, _ = decode_checked(manifest, blob, node="edge1", job="j", payload_sha256=payload_sha256)
        assert got == layout
        strategy.check(state, arrays, 7)
        strategy.fold_in_place(state, arrays, 7)

    def before() -> None:
        _, arrays = decode_weights(blob)
        for a in arrays:
            assert bool(np.isfinite(a).all())
        strategy.check(frozen, arrays, 7)
        strategy.fold(frozen, arrays, 7)

    def numpy_path() -> None:
        pos = offset
        for acc, a in zip(accumulators, update, strict=True):
            view = np.frombuffer(blob, dtype=np.float32, count=a.size, offset=pos)
            pos += a.nbytes
            np.add(acc, view, out=acc)

    numpy_s, engine_s, ratio = paired(numpy_path, engine, repeats)
    return {"numpy": numpy_s, "engine": engine_s, "ratio": ratio, "before": timed(before, max(1, repeats // 2))}


def bench_memory(sizes: list[int], edges: int, folder: Path, memory: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    initial = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    model_bytes = sum(a.nbytes for a in initial)
    shutil.rmtree(folder, ignore_errors=True)
    port = DiskPort(folder)
    # edges + 2 participants: the last one's update is folded before the measurement (the open round holds its
    # model and its float64 accumulator from then on: 3x, not the uploads'), and the round stays open after.
    job = fleet_job(port, edges + 2, initial, settings=JobSettings(transfer_memory=memory))
    first, first_blob = make_transfer(
        initial, kind="update", job="surface-defect-detection", uid=UID, round_=1, sender=f"edge{edges + 1}",
        num_samples=10, chunk_size=1 << 20,
    )  # fmt: skip
    job.on_update(f"edge{edges + 1}", 1, first, first_blob)
    del first_blob
    uploads = {}
    for i in range(1, edges + 1):
        update = [a + np.float32(0.01 * i) for a in initial]
        manifest, blob = make_transfer(
            update, kind="update", job="surface-defect-detection", uid=UID, round_=1, sender=f"edge{i}",
            num_samples=10, chunk_size=1 << 20,
        )  # fmt: skip
        uploads[f"edge{i}"] = (manifest, memoryview(blob), chunks_of(manifest, blob))
    sent = 0
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        start = time.perf_counter()
        longest = max(len(c) for _, _, c in uploads.values())
        for index in range(longest):
            for node, (manifest, _, chunks) in uploads.items():
                if index < len(chunks):
                    job.on_update_chunk(
                        node, 1, manifest.transfer, index, memoryview(chunks[index]).tobytes(), now_s=1.0
                    )
                    sent += 1
        for node, (manifest, _, _) in uploads.items():
            job.on_update_manifest(node, 1, manifest, 1.0)
        seen = 0
        while seen < len(port.acks):
            ack = port.acks[seen]
            seen += 1
            if ack.accepted or not ack.missing:
                continue
            manifest, _, chunks = uploads[ack.node]
            for index in ack.missing:
                job.on_update_chunk(
                    ack.node, 1, manifest.transfer, index, memoryview(chunks[index]).tobytes(), now_s=2.0
                )
                sent += 1
            job.on_update_manifest(ack.node, 1, manifest, 2.0)
        seconds = time.perf_counter() - start
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    stored = sum(1 for a in port.acks if a.accepted and a.reason == "stored") - 1
    total_chunks = sum(len(c) for _, _, c in uploads.values())
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "model_mb": model_bytes / 1e6,
        "peak_x": (peak - base) / model_bytes,
        "held_x": (held - base) / model_bytes,
        "stored": stored,
        "resent_chunks": sent - total_chunks,
        "chunks": total_chunks,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parameters", type=int, default=25_000_000, help="float32 parameters (25M = 100 MB)")
    parser.add_argument("--edges", type=int, default=10, help="concurrent uploads in the memory part")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-fold", action="store_true", help="the memory part only")
    parser.add_argument(
        "--transfer-memory", type=int, default=JobSettings().transfer_memory,
        help="the intake's in-memory budget (bytes); a huge one shows the intake without the spill",
    )  # fmt: skip
    args = parser.parse_args()
    configure_logging(node="bench", role="cli", level="WARNING")
    sizes = shapes_for(args.parameters)
    rng = np.random.default_rng(0)
    update = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    mb = 4 * args.parameters / 1e6
    print(f"model: {args.parameters:,} float32 parameters ({mb:.0f} MB) in {len(sizes)} tensors; 2 cores, shared")

    if args.skip_fold:
        update = []
    else:
        report_speed(update, args.repeats)
    del update
    if not args.skip_memory:
        memory = bench_memory(sizes, args.edges, REPO / ".bench" / "fold", args.transfer_memory)
        print(
            f"memory    {args.edges} concurrent {memory['model_mb']:.0f} MB uploads: peak {memory['peak_x']:.2f}x model "
            f"above the open round's model and accumulator (3x; goal <= 3x + constant), {memory['held_x']:.2f}x "
            f"held after; {memory['stored']}/{args.edges} stored, {memory['resent_chunks']} of "
            f"{memory['chunks']} chunks asked for again, {memory['seconds']:.1f} s"
        )


def report_speed(update: Arrays, repeats: int) -> None:
    fold = bench_fold(update, repeats)
    print(
        f"fold      numpy in-place f64 add {fold['numpy'] * 1e3:7.1f} ms | fold_in_place {fold['in_place'] * 1e3:7.1f} ms"
        f" -> {fold['ratio']:.2f}x numpy (goal >= 0.5x) | pure fold {fold['pure'] * 1e3:7.1f} ms"
        f" ({fold['numpy'] / fold['pure']:.2f}x)"
    )
    path = bench_path(update, repeats)
    print(
        f"path      numpy decode+add {path['numpy'] * 1e3:7.1f} ms | engine decode+check+fold {path['engine'] * 1e3:7.1f} ms"
        f" -> {path['ratio']:.2f}x numpy (goal <= 2x) | before {path['before'] * 1e3:7.1f} ms"
        f" ({path['before'] / path['numpy']:.2f}x)"
    )


if __name__ == "__main__":
    main()
