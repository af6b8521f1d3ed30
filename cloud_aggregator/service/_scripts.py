"""The aggregation scripts of this node (Sedna's aggregation worker), run by the runtime's supervisor.

A script runs as ``sys.executable <scriptDir>/<scriptBootFile>`` with cwd = its scriptDir, both resolved
under the node root and required to lie inside the node's code root (`schemas.NodeRoot.script`), with
Sedna's variables (`aggregation_variables`): JOB_NAME, NAMESPACE, WORKER_NAME, NODE_NAME, MODEL_URL
(resolved under the root), MODEL_NAME, MODEL_FORMAT, PARTICIPANTS_COUNT, PRETRAINED_MODEL_URL when set,
FL_NODE_ROOT, and every parameter of the aggregationWorker under its own key. Its output goes to
``ROOT/logs/<job>/aggregation.log``. How it is started, signalled and reaped is `runtime.ScriptSupervisor`'s
business, the same as on the edges; its frames and its exit come back as `runtime.ScriptFrame` and
`runtime.ScriptExited` events (run id = the job's uid). Nothing here decides about the job.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from cloud_aggregator._errors import WorkerScriptError
from cloud_aggregator.engine import ScriptRequest, ScriptSignal
from runtime import (
    ScriptEvent,
    ScriptLaunch,
    ScriptStartError,
    ScriptSupervisor,
    get_logger,
    script_parameters,
)
from schemas import NodeRoot, PathEscapeError, WorkerEnv

__all__ = ["AggregationScripts", "aggregation_launch", "aggregation_variables"]

FIELD = "spec.aggregationWorker.workerSpec"


def aggregation_variables(request: ScriptRequest, *, root: NodeRoot, node: str) -> dict[str, str]:
    """Sedna's variables for the job's aggregation script (Model urls resolved under the root).

    Raises PathEscapeError when a Model url leaves the node root."""
    model_url = root.resolve(request.model.url, f'Model "{request.model.name}" url')
    variables = {
        WorkerEnv.JOB_NAME: request.job,
        WorkerEnv.NAMESPACE: request.namespace,
        WorkerEnv.WORKER_NAME: f"aggworker-{request.uid[:5]}",
        WorkerEnv.NODE_NAME: node,
        WorkerEnv.MODEL_URL: str(model_url),
        WorkerEnv.MODEL_NAME: request.model.name,
        WorkerEnv.MODEL_FORMAT: request.model.format,
        WorkerEnv.PARTICIPANTS_COUNT: str(request.participants_count),
        WorkerEnv.NODE_ROOT: str(root.path),
    }
    pretrained = request.pretrained_model
    if pretrained is not None:
        variables[WorkerEnv.PRETRAINED_MODEL_URL] = str(root.resolve(pretrained.url, f'Model "{pretrained.name}" url'))
    return variables


def aggregation_launch(request: ScriptRequest, *, root: NodeRoot, node: str) -> ScriptLaunch:
    """The launch of the job's aggregation script.

    Raises WorkerScriptError saying why the script cannot run here (outside the code root, missing, a
    parameter that cannot be an environment variable), PathEscapeError for a Model url out of the root.
    """
    worker = request.worker
    boot = posixpath.join(worker.script_dir, worker.script_boot_file)
    try:
        script_dir = root.script(worker.script_dir, job=request.job, field=f"{FIELD}.scriptDir")
        script = root.script(boot, job=request.job, field=f"{FIELD}.scriptBootFile")
    except PathEscapeError as exc:
        raise WorkerScriptError(str(exc)) from exc
    if not script.is_file():
        raise WorkerScriptError(
            f"aggregation script {boot} not found (looked for {script} under the node root {root.path})"
        )
    variables = aggregation_variables(request, root=root, node=node)
    try:
        parameters = script_parameters(worker.parameters, variables)
    except ScriptStartError as exc:
        raise WorkerScriptError(f"job {request.job}: {exc}") from exc
    launch = ScriptLaunch(
        job=request.job,
        run_id=request.uid,
        script=script,
        cwd=script_dir,
        variables={**parameters, **variables},
        log_path=root.path / "logs" / request.job / "aggregation.log",
    )
    return launch


class AggregationScripts:
    """This node's aggregation scripts: started from a `ScriptRequest`, signalled by (job, uid)."""

    def __init__(
        self,
        *,
        root: NodeRoot,
        node: str,
        emit: Callable[[ScriptEvent], None],
        stop_grace: float = 10.0,
        log: FilteringBoundLogger | None = None,
    ) -> None:
        self.root = root
        self._node = node
        self._log = log or get_logger(component="scripts")
        self._supervisor = ScriptSupervisor(emit, stop_grace=stop_grace, log=self._log)

    @property
    def code_root(self) -> str:
        return self.root.code_root

    def start(self, request: ScriptRequest) -> None:
        """Start the job's aggregation script; raise WorkerScriptError (or PathEscapeError) saying why not."""
        launch = aggregation_launch(request, root=self.root, node=self._node)
        try:
            self._supervisor.start(launch)
        except ScriptStartError as exc:
            raise WorkerScriptError(str(exc)) from exc

    def signal(self, job: str, uid: str, signal: ScriptSignal) -> None:
        """Send `finish` or `stop`; a script still alive after the stop grace is terminated, then killed."""
        self._supervisor.end(job, uid, signal)

    def running(self) -> list[tuple[str, str]]:
        """(job, uid) of every script that has not exited yet."""
        return self._supervisor.running()

    def stop_all(self, grace: float | None = None) -> None:
        """Service shutdown: stop every script and wait until they are gone."""
        self._supervisor.stop_all(grace)
