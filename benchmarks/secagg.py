"""Secure aggregation's cost per round, for 2, 5 and 10 edges, against plain FedAvg measured in the same run.

Two parts:

- ``compute`` (in one process, the product's own functions): per round, what each edge computes
  (`runtime.RoundSecrets.fresh`, `share_bundle`, `mask_update`, `unmask_answer`; its masked blob) and what
  the aggregator computes (summing the masked vectors, `unmask_total`, `decode_weighted_mean`), against
  plain FedAvg's per-round work (each edge encodes its float32 blob; the aggregator decodes and folds every
  update with `FedAvg`); the bytes each edge publishes (advert, bundle, masked update, answer) against the
  plain update blob. Also the round with one edge dropping after its masked upload.
- ``job`` (``--job``: real broker, real aggregator and edge services as processes; the numpy training script
  of the fault tests, sized to the example model's parameter count so training is near free and what is
  left of a round is the protocol): the median round duration (`RoundRecord.durationSeconds`) with and
  without ``secure_aggregation``, same job otherwise. The round overhead is their difference.

    .venv/bin/python benchmarks/secagg.py --edges 2 5 10
    .venv/bin/python benchmarks/secagg.py --edges 2 5 10 --job --rounds 3

Not a test: minutes on 2 cores with ``--job``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cloud_aggregator import FedAvg  # noqa: E402
from runtime import (  # noqa: E402
    FixedPoint,
    RoundContext,
    RoundSecrets,
    mask_update,
    share_bundle,
    sum_masked,
    unmask_answer,
    unmask_total,
)
from schemas import (  # noqa: E402
    KeyAdvert,
    SecAggMember,
    SecAggState,
    ShareBundle,
    UnmaskAnswer,
    b64encode,
    decode_weights,
    encode_weights,
    masked_blob,
)

SEED_MODEL_PARAMETERS = 423_874  # the example's Keras model (examples/surface_defect_detection)
CONTEXT = RoundContext("bench/0123abcd", 1)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def plain_round(n: int, params: int, rng: np.random.Generator) -> dict[str, float]:
    """Plain FedAvg: every edge encodes its update; the aggregator decodes and folds each, then averages."""
    base = rng.normal(0, 0.1, params).astype(np.float32)
    updates = [base + rng.normal(0, 0.01, params).astype(np.float32) for _ in range(n)]
    edge_times, blobs = [], []
    for i, update in enumerate(updates):
        blob, seconds = timed(
            lambda u=update, i=i: encode_weights(
                [u], kind="update", job="bench", round_=1, sender=f"e{i}", num_samples=10 + i
            )
        )
        edge_times.append(seconds)
        blobs.append(blob)
    strategy = FedAvg()

    def aggregate() -> Any:
        layout = (("w", "float32", (params,)),)
        acc = strategy.begin(layout, [base])
        for i, blob in enumerate(blobs):
            acc = strategy.fold(acc, decode_weights(blob)[1], 10 + i)
        return strategy.step(acc, [base], None)

    _, agg_seconds = timed(aggregate)
    return {"edge_s": max(edge_times), "agg_s": agg_seconds, "edge_bytes": float(len(blobs[0]))}


def secagg_round(
    n: int, params: int, rng: np.random.Generator, *, drop_after_upload: int = 0, drop_before_upload: int = 0
) -> dict[str, float]:
    """One secure aggregation round with every message built as the services build it; the last
    `drop_after_upload` edges upload and then never answer; the first `drop_before_upload` share keys and
    never upload (the aggregator re-adds their pair masks from their rebuilt mask keys)."""
    names = [f"edge{i:02d}" for i in range(n)]
    threshold = n // 2 + 1
    deltas = {name: rng.normal(0, 0.01, params) for name in names}
    samples = {name: 10 + i for i, name in enumerate(names)}
    edge_time = dict.fromkeys(names, 0.0)
    edge_bytes = dict.fromkeys(names, 0)

    def on_edge(name: str, fn: Callable[[], Any]) -> Any:
        result, seconds = timed(fn)
        edge_time[name] += seconds
        return result

    secrets = {name: on_edge(name, RoundSecrets.fresh) for name in names}
    adverts = {}
    for name in names:
        advert = on_edge(
            name,
            lambda name=name: (
                secrets[name].key_advert(job="bench", uid="u", round_=1, node=name, num_samples=samples[name]).to_json()
            ),
        )
        adverts[name] = KeyAdvert.model_validate_json(advert)
        edge_bytes[name] += len(advert)
    members = [
        SecAggMember(node=a.node, x=i + 1, c_public=a.c_public, s_public=a.s_public, num_samples=a.num_samples)
        for i, a in enumerate(adverts.values())
    ]
    state = SecAggState(
        job="bench",
        uid="u",
        round=1,
        phase="shares",
        threshold=threshold,
        clip=8.0,
        max_weight=max(samples.values()),
        u1=members,
    )
    state_bytes = len(state.to_json())
    roster = {m.node: (m.x, secrets[m.node].c_public) for m in members}
    sealed_for: dict[str, dict[str, bytes]] = {name: {} for name in names}
    for name in names:
        sealed, secrets[name] = on_edge(
            name, lambda name=name: share_bundle(secrets[name], CONTEXT, own=name, roster=roster, threshold=threshold)
        )
        for receiver, data in sealed.items():
            sealed_for[receiver][name] = data
        bundle = ShareBundle(
            job="bench", uid="u", round=1, node=name, sealed={k: b64encode(v) for k, v in sealed.items()}
        )
        edge_bytes[name] += len(bundle.to_json())
    fixed = FixedPoint(8.0, max_parties=n)
    peers = {name: secrets[name].s_public for name in names}
    masked: dict[str, np.ndarray] = {}
    for name in names[drop_before_upload:]:
        vector = on_edge(
            name,
            lambda name=name: mask_update(
                secrets[name],
                CONTEXT,
                own=name,
                delta=deltas[name],
                weight=samples[name],
                max_weight=state.max_weight,
                fixed=fixed,
                peers=peers,
            ),
        )
        blob = on_edge(
            name,
            lambda v=vector, name=name: masked_blob(v, job="bench", round_=1, sender=name, num_samples=samples[name]),
        )
        masked[name] = vector
        edge_bytes[name] += len(blob)
    u3 = names[drop_before_upload:]
    answerers = u3[: len(u3) - drop_after_upload]
    c_publics = {name: secrets[name].c_public for name in names}
    answers = []
    for name in answerers:
        b, s = on_edge(
            name,
            lambda name=name: unmask_answer(
                secrets[name], CONTEXT, own=name, c_publics=c_publics, sealed_for_me=sealed_for[name], u2=names, u3=u3
            ),
        )
        answer = UnmaskAnswer(
            job="bench",
            uid="u",
            round=1,
            node=name,
            u3=u3,
            b_shares={k: b64encode(v) for k, v in b.items()},
            s_shares={k: b64encode(v) for k, v in s.items()},
        )
        edge_bytes[name] += len(answer.to_json())
        answers.append((b, s))

    def aggregate() -> np.ndarray:
        total = sum_masked(masked.values())
        unmasked = unmask_total(total, CONTEXT, s_publics=peers, u2=names, u3=u3, answers=answers, threshold=threshold)
        return fixed.decode_weighted_mean(unmasked)

    mean, agg_seconds = timed(aggregate)
    plain = np.average([deltas[name] for name in u3], axis=0, weights=[samples[name] for name in u3])
    error = float(np.max(np.abs(mean - plain)))
    assert error < 1e-6, error
    return {
        "edge_s": max(edge_time.values()),
        "agg_s": agg_seconds,
        "edge_bytes": float(max(edge_bytes.values())),
        "state_bytes": float(state_bytes),
        "max_error": error,
    }


def compute_table(edge_counts: list[int], params: int, repeats: int) -> None:
    print(f"# compute and bytes per round, model of {params} parameters, median of {repeats}")
    print(
        "| edges | plain edge s | secagg edge s | plain aggregator s | secagg aggregator s | secagg aggregator s, 1 dropped after upload | 1 dropped before upload | bytes per edge (secagg / plain) | max error vs FedAvg |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n in edge_counts:
        rng = np.random.default_rng(n)
        plain = [plain_round(n, params, rng) for _ in range(repeats)]
        secure = [secagg_round(n, params, rng) for _ in range(repeats)]
        # With t = n // 2 + 1, two edges need both answers: no dropout is survivable there.
        survivable = n - 1 >= n // 2 + 1
        dropped = [secagg_round(n, params, rng, drop_after_upload=1) for _ in range(repeats)] if survivable else []
        before = [secagg_round(n, params, rng, drop_before_upload=1) for _ in range(repeats)] if survivable else []

        def med(rows: list[dict[str, float]], key: str) -> float:
            return statistics.median(row[key] for row in rows)

        dropped_s = f"{med(dropped, 'agg_s'):.3f}" if dropped else "n/a (t = n)"
        before_s = f"{med(before, 'agg_s'):.3f}" if before else "n/a (t = n)"
        print(
            f"| {n} | {med(plain, 'edge_s'):.3f} | {med(secure, 'edge_s'):.3f} ({med(secure, 'edge_s') / med(plain, 'edge_s'):.0f}x) "
            f"| {med(plain, 'agg_s'):.3f} | {med(secure, 'agg_s'):.3f} ({med(secure, 'agg_s') / med(plain, 'agg_s'):.1f}x) "
            f"| {dropped_s} | {before_s} | {med(secure, 'edge_bytes'):.0f} / {med(plain, 'edge_bytes'):.0f} "
            f"({med(secure, 'edge_bytes') / med(plain, 'edge_bytes'):.4f}x) | {max(r['max_error'] for r in secure + dropped + before):.1e} |"
        )


def job_table(edge_counts: list[int], params: int, rounds: int) -> None:
    """Median round duration of the same job over the real broker and services, with and without secagg."""
    from benchmarks._jobs import run_numpy_job  # a real cluster; imported only for --job

    features = 64
    hidden = max(1, params // (features + 1))
    print(f"# real broker and services, numpy script of {features * hidden + hidden} parameters, {rounds} rounds")
    print("| edges | plain round s (median) | secagg round s (median) | overhead s | ratio |")
    print("|---|---|---|---|---|")
    for n in edge_counts:
        durations = {}
        for secure in (False, True):
            params_agg = {"secure_aggregation": "true"} if secure else {}
            with tempfile.TemporaryDirectory(prefix="secagg-bench-") as tmp:
                records = run_numpy_job(
                    Path(tmp), n, rounds=rounds, features=features, hidden=hidden, agg_params=params_agg
                )
            durations[secure] = statistics.median(r.duration_seconds for r in records if r.duration_seconds is not None)
        plain, secure_s = durations[False], durations[True]
        print(f"| {n} | {plain:.2f} | {secure_s:.2f} | {secure_s - plain:+.2f} | {secure_s / plain:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--edges", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--params", type=int, default=SEED_MODEL_PARAMETERS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--job", action="store_true", help="also run the job over the real broker and services")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    compute_table(args.edges, args.params, args.repeats)
    if args.job:
        job_table(args.edges, args.params, args.rounds)


if __name__ == "__main__":
    main()
