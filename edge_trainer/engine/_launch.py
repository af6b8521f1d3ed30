"""From a job plan to a runnable training script: local checks, resolved paths and Sedna's environment.

`prepare_launch` is where an edge decides whether it can run its part of a plan. It refuses (raises
`PlanRejectedError` with a reason the user reads in the worker status) when the planned Dataset is not on
this node, the framework is not TensorFlow, a path escapes the node root, or the script or label
file is missing. Training scripts run only from the node's code root (``--code-root``, default
``/code``, a folder under the node root): a scriptDir or boot file that resolves elsewhere (another
folder of the root such as /data, ``..``, a symlink out) is refused. A frameworkVersion other than the installed TensorFlow's only yields a warning:
scripts written for TF 2.3 usually run on newer versions, and refusing would block every job.
A ``TEST_DATASET_URL`` parameter (Sedna's held-out label file, which the worker scores every global model
on) is a spec path like the Dataset url: resolved under the node root, refused when it escapes or is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

from edge_trainer._errors import PlanRejectedError
from runtime import ScriptLaunch, ScriptStartError, script_parameters
from schemas import JobPlan, NodeRoot, PathEscapeError, PlannedWorker, WorkerEnv

__all__ = [
    "LaunchSpec",
    "installed_tensorflow_version",
    "prepare_launch",
]

# Distributions that provide the `tensorflow` package. Checked through their metadata, never by
# importing TensorFlow: the service must stay fast and light.
_TF_DISTRIBUTIONS = (
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-intel",
    "tensorflow-macos",
    "tf-nightly",
    "tf-nightly-cpu",
)
_VERSION = re.compile(r"(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start one job's training script on this node."""

    job: str
    script: Path
    cwd: Path
    env: dict[str, str]  # Sedna's worker variables and the plan's parameters, added to the service's environment
    log_path: Path
    model_path: Path
    dataset_path: Path
    warnings: tuple[str, ...] = ()

    def script_launch(self, run_id: str) -> ScriptLaunch:
        """What `runtime.ScriptSupervisor` starts for run `run_id` of this job."""
        return ScriptLaunch(
            job=self.job, run_id=run_id, script=self.script, cwd=self.cwd, variables=self.env, log_path=self.log_path
        )


def installed_tensorflow_version() -> str | None:
    """The installed TensorFlow version from package metadata, or None if none is installed."""
    for name in _TF_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def prepare_launch(
    plan: JobPlan, node: str, root: NodeRoot, *, tf_version: str | None, site: str | None = None
) -> LaunchSpec:
    """Check this node's part of `plan` and build its launch; raise PlanRejectedError saying why not.

    Scripts must lie in the root's code root (`NodeRoot.script`). `site` is the node's own (node.yaml
    `site:`; None: not set, e.g. every node on one broker).
    """
    worker = plan.worker(node)
    if worker is None:
        raise PlanRejectedError(plan.job, f"the plan has no training worker on node {node}")
    field = f"spec.trainingWorkers[{plan.workers.index(worker)}].workerSpec"
    planned_site = plan.site_of(node)
    if planned_site is not None and site is not None and planned_site != site:
        # Its updates would go to the planned site's aggregator, on a broker this node does not reach: they
        # would wait unacknowledged until the round's deadline. Refuse now, saying so.
        raise PlanRejectedError(
            plan.job,
            f"{field}.parameters site is {planned_site!r} but this node is at site {site!r} (its node.yaml "
            f"site:); a hierarchical job's edge must name the site whose broker it connects to",
        )
    warnings = [*_check_framework(plan.job, worker, tf_version)]
    dataset = worker.dataset
    if dataset.node_name != node:
        raise PlanRejectedError(
            plan.job,
            f'Dataset "{dataset.name}" belongs to node {dataset.node_name}, not {node}: data never leaves its node',
        )
    try:
        dataset_path = root.resolve(dataset.url, f'Dataset "{dataset.name}" url')
        script_dir = root.script(worker.script.dir, job=plan.job, field=f"{field}.scriptDir")
        script = root.script(
            str(PurePosixPath(worker.script.dir) / worker.script.boot_file),
            job=plan.job,
            field=f"{field}.scriptBootFile",
        )
        model_path = root.resolve(plan.model.url, f'Model "{plan.model.name}" url')
        pretrained = (
            root.resolve(plan.pretrained_model.url, f'pretrained Model "{plan.pretrained_model.name}" url')
            if plan.pretrained_model is not None
            else None
        )
    except PathEscapeError as exc:
        raise PlanRejectedError(plan.job, str(exc)) from exc
    if model_path == root.path:
        raise PlanRejectedError(
            plan.job,
            f'Model "{plan.model.name}" url {plan.model.url} is the node root itself; give the model its own folder, e.g. /model',
        )
    if not dataset_path.is_file():
        raise PlanRejectedError(
            plan.job, f'label file of Dataset "{dataset.name}" not found: {dataset.url} (looked at {dataset_path})'
        )
    if not script.is_file():
        raise PlanRejectedError(
            plan.job,
            f"training script {worker.script.boot_file} not found in scriptDir {worker.script.dir} (looked at {script})",
        )
    env = {
        WorkerEnv.JOB_NAME: plan.job,
        WorkerEnv.NAMESPACE: plan.namespace,
        WorkerEnv.WORKER_NAME: node,
        WorkerEnv.NODE_NAME: node,
        WorkerEnv.MODEL_URL: str(model_path),
        WorkerEnv.MODEL_NAME: plan.model.name,
        WorkerEnv.MODEL_FORMAT: plan.model.format,
        WorkerEnv.TRAIN_DATASET_URL: str(dataset_path),
        WorkerEnv.DATASET_NAME: dataset.name,
        WorkerEnv.PARTICIPANTS_COUNT: str(len(plan.workers)),
        WorkerEnv.NODE_ROOT: str(root.path),
        WorkerEnv.JOB_UID: plan.uid,
    }
    if pretrained is not None:
        env[WorkerEnv.PRETRAINED_MODEL_URL] = str(pretrained)
    try:
        parameters = script_parameters(worker.parameters, env)
    except ScriptStartError as exc:
        raise PlanRejectedError(plan.job, str(exc)) from exc
    env = {**parameters, **env}
    test_url = parameters.get(WorkerEnv.TEST_DATASET_URL)
    if test_url:
        # Sedna's knob for a held-out label file (the example validates on it, and the worker scores every
        # global model on it: federated evaluation). A spec path like the Dataset url: under the node root.
        try:
            test_path = root.resolve(test_url, f"{field}.parameters {WorkerEnv.TEST_DATASET_URL}")
        except PathEscapeError as exc:
            raise PlanRejectedError(plan.job, str(exc)) from exc
        if not test_path.is_file():
            raise PlanRejectedError(
                plan.job, f"{WorkerEnv.TEST_DATASET_URL} label file not found: {test_url} (looked at {test_path})"
            )
        env[WorkerEnv.TEST_DATASET_URL] = str(test_path)
    return LaunchSpec(
        job=plan.job,
        script=script,
        cwd=script_dir,
        env=env,
        log_path=root.path / "logs" / plan.job / "worker.log",
        model_path=model_path,
        dataset_path=dataset_path,
        warnings=tuple(warnings),
    )


def _check_framework(job: str, worker: PlannedWorker, tf_version: str | None) -> list[str]:
    framework = worker.script.framework_type
    if framework.lower() != "tensorflow":
        raise PlanRejectedError(
            job, f'frameworkType "{framework}" is not supported on this node: only "tensorflow" scripts run here'
        )
    if tf_version is None:
        raise PlanRejectedError(job, "TensorFlow is not installed on this node")
    wanted = worker.script.framework_version
    if wanted and not _same_release(wanted, tf_version):
        return [f"frameworkVersion {wanted} requested, TensorFlow {tf_version} is installed: running with {tf_version}"]
    return []


def _same_release(wanted: str, installed: str) -> bool:
    """Equal major.minor (or equal major when `wanted` names only a major version)."""
    want = _VERSION.match(wanted.strip().removeprefix("v"))
    have = _VERSION.match(installed)
    if want is None or have is None:
        return wanted.strip() == installed
    if want.group(2) is None:
        return want.group(1) == have.group(1)
    return (want.group(1), want.group(2)) == (have.group(1), have.group(2))
