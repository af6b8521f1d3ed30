"""Sedna's aggregation worker API, for the job's aggregation script (runs in the script's process).

The example's ``aggregate.py`` ports by changing its import line only::

    from cloud_aggregator import AggregationServer, Context

    server = AggregationServer(aggregation="FedAvg", exit_round=3, ws_size=20 * 1024 * 1024, participants_count=2)
    server.start()

In Sedna, `AggregationServer.start()` runs the websocket server that aggregates. Here the aggregation
runs in fl-cloud-aggregator, the script's parent: `start()` opens the worker channel (``FL_WORKER_FD``),
sends the settings as a ``config`` frame, and blocks until the service sends ``finish`` or ``stop``, then
returns, so the script's process ends when the job does, as Sedna's does. A channel that ends without
either means the service is gone (`runtime.ServiceWatch`, shared with the training API and its
watchdog thread): one line on stderr (aggregation.log), exit code `runtime.SERVICE_GONE_EXIT` (69), no
traceback.
"""

from __future__ import annotations

import os
from typing import Any

from cloud_aggregator._errors import WorkerScriptError
from runtime import ChannelClosed, ServiceWatch, WorkerChannel
from schemas import MAX_EXIT_ROUND, Context, WorkerEnv, WorkerFrame

__all__ = ["AggregationServer", "Context"]


class AggregationServer:
    """Sedna's ``sedna.service.server.AggregationServer``: announce the job's aggregation settings, wait for its end."""

    def __init__(
        self,
        aggregation: str = "FedAvg",
        exit_round: int | str = 3,
        ws_size: int = 10 * 1024 * 1024,
        participants_count: int | str = 1,
        **kwargs: Any,
    ) -> None:
        try:
            rounds = int(exit_round)
            participants = int(participants_count)
        except (TypeError, ValueError) as exc:
            raise WorkerScriptError(
                f"AggregationServer: exit_round ({exit_round!r}) and participants_count "
                f"({participants_count!r}) must be whole numbers"
            ) from exc
        if rounds > MAX_EXIT_ROUND:
            # The spec's bound (schemas.PARAMETER_BOUNDS): a script that reads exit_round from its
            # parameters never gets past it; one that hard-codes a bigger number is told here.
            raise WorkerScriptError(f"AggregationServer: exit_round {rounds} is over the limit of {MAX_EXIT_ROUND}")
        self.aggregation = str(aggregation)
        self.exit_round = max(rounds, 1)  # as Sedna clamps it
        self.participants_count = participants
        self.ws_size = ws_size  # kept for Sedna compatibility: chunked MQTT transfers have no frame limit
        self.kwargs = kwargs
        self.finished_by: str | None = None

    def config_frame(self) -> WorkerFrame:
        """The `config` frame this server sends."""
        return WorkerFrame(
            type="config",
            aggregation=self.aggregation,
            exit_round=self.exit_round,
            participants_count=self.participants_count,
        )

    def start(self) -> None:
        """Send the settings to fl-cloud-aggregator and block until the job ends (`finish` or `stop`).

        If the service is gone (the channel ends without either), the process exits with
        `runtime.SERVICE_GONE_EXIT` after one line on stderr (`runtime.ServiceGone`, a SystemExit)."""
        raw = os.environ.get(WorkerEnv.WORKER_FD)
        if not raw:
            raise WorkerScriptError(
                f"AggregationServer.start() needs the worker channel ({WorkerEnv.WORKER_FD} is not set): the aggregation "
                "script must be started by fl-cloud-aggregator, which runs the job's aggregationWorker "
                "scriptDir/scriptBootFile; create the job with flctl instead of running the script by hand"
            )
        try:
            fd = int(raw)
        except ValueError as exc:
            raise WorkerScriptError(f"{WorkerEnv.WORKER_FD}={raw!r} is not a file descriptor number") from exc
        channel = WorkerChannel.from_fd(fd)
        watch = ServiceWatch("fl-cloud-aggregator").start()
        try:
            try:
                channel.send(self.config_frame())
                while True:
                    frame, _body = channel.recv()
                    if frame.type in ("finish", "stop"):
                        self.finished_by = frame.type
                        return
            except ChannelClosed as exc:
                # Without finish or stop the service is gone (or dropped this script): one line, no
                # traceback, SERVICE_GONE_EXIT (raises ServiceGone).
                self.finished_by = "eof"
                watch.channel_closed(str(exc))
        finally:
            watch.stop()
            channel.close()
