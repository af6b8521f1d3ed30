"""``FederatedLearning``: Sedna's training-worker API, spoken over the worker channel.

Runs in the training script's process, which the node service started (it never touches MQTT).
The script calls ``FederatedLearning(estimator=Estimator).train(train_data, ...)`` exactly as with
Sedna; ``train`` then

1. sends ``hello`` with the number of samples and the estimator's initial weights;
2. on ``train`` (round r): sets the weights from the global model of round r-1, scores them on the
   worker's held-out data and sends ``evaluated`` (federated evaluation, `edge_trainer._evaluate`;
   not for the round-0 model, which nobody trained), runs ``estimator.train`` (local epochs; with FedProx,
   see below, also given ``global_weights=`` and ``mu=``) and sends
   ``update`` with the new weights, the sample count and the last value of each metric of the
   training history (local or distributed DP, the plan's ``dp_mode``: its delta from the global model
   clipped and noised first, `edge_trainer._privacy`);
3. on ``finish``: sets the final weights, scores them (``evaluated``), saves the model at ``MODEL_URL``
   in ``MODEL_FORMAT``, sends ``saved`` (path and weights digest) and returns the estimator;
4. on ``stop``: returns at once.

FedProx: the job's ``mu`` parameter (a training-worker parameter, default 0; or ``train(..., mu=...)`` in
the script, which wins) is the proximal weight. With ``mu > 0`` every ``estimator.train`` call also gets
``global_weights`` (the arrays of the global model this round trains from, the very ones just set, in
``get_weights()`` order, read-only) and ``mu``, so the estimator can add ``(mu/2)·||w - global_weights||²``
to its loss. With ``mu = 0`` nothing is added to the call: a script that does not know FedProx trains as
before. An estimator whose ``train`` can take neither (no ``**kwargs``, no such parameters) while ``mu > 0``
is a `WorkerError` before the hello, not a job that silently trains without the term.

Any exception is reported to the service as an ``error`` frame (best effort) and re-raised, so the
script exits non-zero with its traceback in the job's worker.log; a `DatasetError` is sent as a data
error (``errorKind: data``), whose one-line message is the whole failure message (`edge_trainer._samples`).
The hello carries what the data loader skipped as not samples (count and first lines). A service that is gone is no such
failure (`runtime.ServiceWatch`): when the channel ends without ``stop`` or ``finish``, or the service
dies while the estimator trains, the script writes one line to worker.log and exits with code
`runtime.SERVICE_GONE_EXIT` (69), without a traceback. TensorFlow is not imported here; only saving a
Keras model imports it (`edge_trainer._model_io`).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_trainer._errors import DatasetError, WorkerError
from edge_trainer._evaluate import HeldOut, evaluate, held_out
from edge_trainer._model_io import save_model
from edge_trainer._privacy import EdgePrivacy
from edge_trainer._samples import mark_reported, skipped_samples
from runtime import ChannelClosed, ServiceWatch, WorkerChannel
from schemas import (
    PARAMETER_BOUNDS,
    Context,
    WeightsKind,
    WorkerEnv,
    WorkerFrame,
    decode_weights,
    encode_weights,
    weights_digest,
)

__all__ = ["FederatedLearning"]

Arrays = list[npt.NDArray[Any]]


class FederatedLearning:
    """Sedna's ``sedna.core.federated_learning.FederatedLearning`` for a script run by ``fl-edge-trainer``.

    ``estimator`` is an estimator class (instantiated without arguments, as Sedna's backend does) or an
    instance, with ``train``, ``get_weights``, ``set_weights`` and ``save``/``predict``. The
    ``aggregation`` name is kept for parity: the job's aggregation worker decides the algorithm.
    """

    def __init__(self, estimator: Any, aggregation: str = "FedAvg") -> None:
        self.estimator = estimator() if isinstance(estimator, type) else estimator
        self.aggregation = aggregation
        self.job_name = os.environ.get(WorkerEnv.JOB_NAME, "")
        self.worker_name = os.environ.get(WorkerEnv.WORKER_NAME, "")
        self._held_out: HeldOut | None = None

    def train(
        self,
        train_data: Any,
        valid_data: Any = None,
        post_process: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Train federatedly until the job's final round; return the estimator (holding the final weights).

        ``post_process``, if given, is applied to each ``estimator.train`` result before its metrics are
        read (Sedna names a registered callback here; pass the callable itself). Other keyword
        arguments go to ``estimator.train`` (epochs, batch_size, ...); ``mu`` sets FedProx's proximal
        weight instead of the job's ``mu`` parameter (see the module's docstring).
        """
        if post_process is not None and not callable(post_process):
            raise WorkerError(f"post_process must be a callable, got {type(post_process).__name__}")
        channel = _open_channel()
        watch = ServiceWatch("fl-edge-trainer").start()
        try:
            return self._run(channel, train_data, valid_data, post_process, kwargs)
        except ChannelClosed as exc:
            # The service is gone (or dropped this script): nobody reads an error frame, and a traceback
            # would say the script failed. One line and SERVICE_GONE_EXIT instead (raises ServiceGone).
            watch.channel_closed(str(exc))
        except BaseException as exc:
            data = isinstance(exc, DatasetError)  # e.g. an estimator that loads its images lazily
            message = str(exc) if isinstance(exc, (WorkerError, DatasetError)) else f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):  # best effort: the channel may be what failed
                channel.send(WorkerFrame(type="error", message=message[:4000], error_kind="data" if data else None))
                mark_reported(exc)
            raise
        finally:
            watch.stop()
            channel.close()

    def inference(self, data: Any, post_process: Callable[[Any], Any] | None = None, **kwargs: Any) -> Any:
        """Predict with the estimator (Sedna parity): ``estimator.predict(data, **kwargs)``, then ``post_process``."""
        result = self.estimator.predict(data, **kwargs)
        return post_process(result) if post_process is not None else result

    # -- the round loop ------------------------------------------------------------------------------

    def _run(
        self,
        channel: WorkerChannel,
        train_data: Any,
        valid_data: Any,
        post_process: Callable[[Any], Any] | None,
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            num_samples = len(train_data)
        except TypeError as exc:
            raise WorkerError(f"train_data has no length ({type(train_data).__name__}); pass a parsed dataset") from exc
        mu = _proximal_mu(kwargs)  # before anything is sent: a bad mu fails the worker up front
        _check_proximal(self.estimator.train, mu)
        privacy = EdgePrivacy.from_parameters()  # so does a bad DP setting
        weights = self._get_weights()
        names = _tensor_names(self.estimator, len(weights))
        shapes = [w.shape for w in weights]
        skipped, skipped_lines = skipped_samples()
        self._held_out = held_out(train_data, valid_data, kwargs)
        print(
            "federated evaluation on "
            + (self._held_out.source if self._held_out else "nothing: no valid_data and no validation_split"),
            file=sys.stderr,
            flush=True,
        )
        if privacy is not None:  # the settings only: the noise itself is never written anywhere
            print(privacy.describe(), file=sys.stderr, flush=True)
        if mu > 0:
            print(f"FedProx: mu={mu:g} (estimator.train gets global_weights and mu)", file=sys.stderr, flush=True)
        channel.send(
            WorkerFrame(
                type="hello",
                num_samples=num_samples,
                skipped=skipped or None,
                skipped_lines=skipped_lines or None,
                has_body=True,
            ),
            self._encode(weights, "init", 0, num_samples, names),
        )
        last_metrics: dict[str, float] = {}  # the last round's, recorded in the saved model's model.json
        while True:
            frame, body = channel.recv()  # ChannelClosed: the service is gone (see `train`)
            if frame.type == "train":
                global_weights = self._set_weights(body, frame.round, shapes)
                if frame.round > 1:  # the global model of round r-1 (the round-0 model is nobody's work)
                    self._evaluate(channel, frame.round - 1)
                # FedProx's anchor: this round's decoded arrays, not the estimator's copies (which training
                # changes in place for some estimators). Nothing extra for mu = 0: older scripts keep working.
                proximal = {"global_weights": global_weights, "mu": mu} if mu > 0 else {}
                result = self.estimator.train(train_data=train_data, valid_data=valid_data, **kwargs, **proximal)
                if post_process is not None:
                    result = post_process(result)
                weights = self._get_weights()
                if privacy is not None:  # local or distributed DP: noised before it leaves this process
                    weights = privacy.apply(weights, global_weights)
                last_metrics = _metrics(result)
                channel.send(
                    WorkerFrame(
                        type="update",
                        round=frame.round,
                        num_samples=num_samples,
                        metrics=last_metrics,
                        has_body=True,
                    ),
                    self._encode(weights, "update", frame.round, num_samples, names),
                )
            elif frame.type == "finish":
                self._set_weights(body, frame.round, shapes)
                self._evaluate(channel, frame.round)
                final = self._get_weights()
                digest = weights_digest(final)
                saved = save_model(
                    self.estimator,
                    _required_env(WorkerEnv.MODEL_URL),
                    os.environ.get(WorkerEnv.MODEL_FORMAT) or "ckpt",
                    job=self.job_name,
                    round_=frame.round,
                    digest=digest,
                    num_tensors=len(final),
                    model_name=os.environ.get(WorkerEnv.MODEL_NAME),
                    run=os.environ.get(WorkerEnv.JOB_UID, ""),
                    metrics=last_metrics,
                )
                channel.send(
                    WorkerFrame(type="saved", round=frame.round, model_path=str(saved.path), model_digest=digest)
                )
                return self.estimator
            elif frame.type == "stop":
                return self.estimator
            else:
                raise WorkerError(f"unexpected {frame.type!r} frame from the node service")

    def _evaluate(self, channel: WorkerChannel, round_: int) -> None:
        """Score the weights just set (the global model of `round_`) and send them. A model whose output is
        not class scores is said once in worker.log and not evaluated again: evaluation never fails a job."""
        if self._held_out is None:
            return
        try:
            evaluation = evaluate(self.estimator, self._held_out, round_)
        except Exception as exc:  # the estimator's predict may raise anything
            print(f"federated evaluation turned off: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            self._held_out = None
            return
        channel.send(WorkerFrame(type="evaluated", round=round_, evaluation=evaluation))

    # -- weights -------------------------------------------------------------------------------------

    def _get_weights(self) -> Arrays:
        return [np.asarray(w) for w in self.estimator.get_weights()]

    def _set_weights(self, body: bytes | None, round_: int, shapes: list[tuple[int, ...]]) -> Arrays:
        """Set the global model of `round_` from its blob; return its arrays (read-only views of the blob)."""
        if not body:
            raise WorkerError(f"the node service sent no weights for round {round_}")
        _header, arrays = decode_weights(body)
        got = [a.shape for a in arrays]
        if got != shapes:
            raise WorkerError(
                f"the global model of round {round_} has {len(got)} tensors shaped {got}, but this model has "
                f"{len(shapes)} shaped {shapes}: do all edges run the same training script?"
            )
        # Writable copies: the decoded arrays are read-only views of the blob.
        self.estimator.set_weights([np.array(a) for a in arrays])
        return list(arrays)

    def _encode(
        self, weights: Arrays, kind: WeightsKind, round_: int, num_samples: int, names: list[str] | None
    ) -> bytes:
        return encode_weights(
            weights,
            kind=kind,
            job=self.job_name,
            round_=round_,
            sender=self.worker_name,
            num_samples=num_samples,
            names=names,
        )


def _open_channel() -> WorkerChannel:
    raw = os.environ.get(WorkerEnv.WORKER_FD)
    if not raw:
        raise WorkerError(
            f"{WorkerEnv.WORKER_FD} is not set: start this script through fl-edge-trainer "
            "(the node service runs a job's training script and talks to it over a local channel)"
        )
    try:
        return WorkerChannel.from_fd(int(raw))
    except (ValueError, ChannelClosed) as exc:
        raise WorkerError(
            f"{WorkerEnv.WORKER_FD}={raw!r} is not an open worker channel: start this script through fl-edge-trainer"
        ) from exc


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise WorkerError(f"{name} is not set: start this script through fl-edge-trainer")
    return value


def _proximal_mu(kwargs: dict[str, Any]) -> float:
    """FedProx's mu: ``train(mu=...)`` (taken out of the estimator's kwargs, the API passes it itself), else
    the job's ``mu`` parameter, else 0; within `schemas.PARAMETER_BOUNDS` (the rule ``flctl create`` applies)."""
    given = kwargs.pop("mu", None)
    raw = given if given is not None else Context.get_parameters("mu")
    source = "train(mu=...)" if given is not None else "parameter mu"
    if raw is None or str(raw).strip() == "":
        return 0.0
    problem = PARAMETER_BOUNDS["mu"].problem(str(raw).strip())
    if problem is not None:
        raise WorkerError(f"{source}={raw!r}: {problem} (FedProx's proximal weight; 0: plain FedAvg training)")
    return float(raw)


def _check_proximal(train: Callable[..., Any], mu: float) -> None:
    """A `WorkerError` when ``mu > 0`` and ``train`` can take no ``global_weights`` and ``mu`` keywords."""
    if mu <= 0:
        return
    try:
        parameters = inspect.signature(train).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): the call itself will tell
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return
    named = {p.name for p in parameters if p.kind is not inspect.Parameter.POSITIONAL_ONLY}
    if not {"global_weights", "mu"} <= named:
        raise WorkerError(
            f"the job sets mu={mu:g} (FedProx) but estimator.train takes no global_weights and mu keyword "
            "arguments: add them and the proximal term (README, FedProx), or set mu to 0"
        )


def _tensor_names(estimator: Any, count: int) -> list[str] | None:
    """Keras variable paths (``sequential/dense/kernel``) when the estimator has a Keras ``.model``
    whose weights line up with ``get_weights()``; None (``w0``, ``w1``, ...) otherwise."""
    variables = getattr(getattr(estimator, "model", None), "weights", None)
    if not isinstance(variables, Sequence) or len(variables) != count:
        return None
    names = [getattr(v, "path", None) or getattr(v, "name", None) for v in variables]
    if not all(isinstance(n, str) and n for n in names) or len(set(names)) != count:
        return None
    return [str(n) for n in names]


def _metrics(result: Any) -> dict[str, float]:
    """The last value of each metric of a training result (a history dict or a Keras History)."""
    history = getattr(result, "history", result)
    if not isinstance(history, Mapping):
        return {}
    metrics: dict[str, float] = {}
    for key, raw in history.items():
        values = raw.ravel().tolist() if isinstance(raw, np.ndarray) else raw
        value = values[-1] if isinstance(values, Sequence) and not isinstance(values, str) and values else values
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):  # NaN and inf do not survive JSON
            metrics[str(key)] = number
    return metrics
