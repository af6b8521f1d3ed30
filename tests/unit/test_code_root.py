"""The code root (issue 4, edge node safety): training and aggregation scripts run only from the node's
code root (``--code-root``, default ``/code`` under the node root). A scriptDir or boot file that leaves
it (another folder of the root such as /data, ``..``, a symlink out) is refused with a message naming
the job, the spec field, the path and the code root; Dataset and Model urls stay checked against the
node root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cloud_aggregator import WorkerScriptError
from cloud_aggregator.cli import build_parser
from cloud_aggregator.engine import ScriptRequest
from cloud_aggregator.service import AggregationScripts, aggregation_launch
from edge_trainer import PlanRejectedError
from edge_trainer.engine import prepare_launch
from schemas import (
    DEFAULT_CODE_ROOT,
    DatasetRef,
    EffectiveWorker,
    JobPlan,
    ModelRef,
    NodeRoot,
    PlannedWorker,
    ScriptRef,
)

JOB = "job1"
NODE = "edge1"
FIELD = "spec.trainingWorkers[1].workerSpec"  # edge1 is the plan's second worker


def lay_out(root: Path) -> Path:
    (root / "code").mkdir(parents=True)
    (root / "code" / "train.py").write_text("print('hi')\n")
    (root / "code" / "aggregate.py").write_text("print('hi')\n")
    (root / "data").mkdir()
    (root / "data" / "train.txt").write_text("a,1\n")
    (root / "data" / "evil.py").write_text("print('evil')\n")
    return root


def plan(script_dir: str = "/code", boot: str = "train.py", *, dataset_url: str = "/data/train.txt",
         model_url: str = "/model") -> JobPlan:  # fmt: skip
    return JobPlan(
        job=JOB,
        uid="u" * 32,
        aggregation_node="cloud0",
        aggregation="FedAvg",
        exit_round=3,
        participants=["edge0", NODE],
        model=ModelRef(name="m", url=model_url, format="ckpt"),
        workers=[
            PlannedWorker(
                node="edge0",
                dataset=DatasetRef(name="d0", url="/data/train.txt", format="txt", node_name="edge0"),
                script=ScriptRef(dir="/code", boot_file="train.py", framework_type="tensorflow"),
                parameters={},
            ),
            PlannedWorker(
                node=NODE,
                dataset=DatasetRef(name="d1", url=dataset_url, format="txt", node_name=NODE),
                script=ScriptRef(dir=script_dir, boot_file=boot, framework_type="tensorflow"),
                parameters={},
            ),
        ],
        chunk_size=64 * 1024,
    )


def refuse(root: Path, job_plan: JobPlan, **kwargs: str) -> str:
    with pytest.raises(PlanRejectedError) as err:
        prepare_launch(job_plan, NODE, NodeRoot(root, **kwargs), tf_version="2.21.0")
    return err.value.reason


# -- edge: prepare_launch ------------------------------------------------------------------------


def test_script_inside_the_code_root_is_accepted(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "edge1")
    (root / "code" / "sub").mkdir()
    (root / "code" / "sub" / "train.py").write_text("")
    launch = prepare_launch(plan(), NODE, NodeRoot(root), tf_version="2.21.0")
    assert launch.script == (root / "code" / "train.py").resolve()
    assert launch.cwd == (root / "code").resolve()
    launch = prepare_launch(plan("/code/x/../sub"), NODE, NodeRoot(root), tf_version="2.21.0")
    assert launch.script == (root / "code" / "sub" / "train.py").resolve()
    # a plain NodeRoot means the default code root /code
    assert prepare_launch(plan(), NODE, NodeRoot(root), tf_version="2.21.0").script == launch.cwd.parent / "train.py"


def test_another_folder_of_the_root_is_refused(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "edge1")
    reason = refuse(root, plan("/data", "evil.py"))
    assert reason.startswith(f"job {JOB}: {FIELD}.scriptDir '/data' is outside the code root /code")
    assert str((root / "code").resolve()) in reason and str((root / "data").resolve()) in reason


def test_dotdot_out_of_the_code_root_is_refused(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "edge1")
    reason = refuse(root, plan("/code/../data", "evil.py"))
    assert f"{FIELD}.scriptDir '/code/../data' is outside the code root /code" in reason
    # out of the node root altogether: still named as a code-root refusal, with the node-root reason
    reason = refuse(root, plan("/code/../../etc", "passwd"))
    assert f"job {JOB}: {FIELD}.scriptDir '/code/../../etc' is outside the code root /code" in reason
    assert "escapes the node root" in reason


def test_boot_file_that_leaves_the_code_root_is_refused(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "edge1")
    reason = refuse(root, plan("/code", "../data/evil.py"))
    assert f"{FIELD}.scriptBootFile '/code/../data/evil.py' is outside the code root /code" in reason


def test_symlink_out_of_the_code_root_is_refused(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "edge1")
    (root / "code" / "linked").symlink_to(root / "data")
    reason = refuse(root, plan("/code/linked", "evil.py"))
    assert f"{FIELD}.scriptDir '/code/linked' is outside the code root /code" in reason
    assert f"resolves to {(root / 'data').resolve()}" in reason
    # a boot file that is a symlink to a script elsewhere
    (root / "code" / "link.py").symlink_to(root / "data" / "evil.py")
    reason = refuse(root, plan("/code", "link.py"))
    assert f"{FIELD}.scriptBootFile '/code/link.py' is outside the code root /code" in reason
    # a symlink out of the node root entirely
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "train.py").write_text("")
    (root / "code" / "away").symlink_to(outside)
    reason = refuse(root, plan("/code/away"))
    assert f"{FIELD}.scriptDir '/code/away' is outside the code root /code" in reason


def test_a_code_root_that_is_itself_a_symlink_inside_the_root_works(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "edge1")
    (root / "srv").mkdir()
    (root / "srv" / "train.py").write_text("")
    (root / "scripts").symlink_to(root / "srv")
    launch = prepare_launch(plan("/scripts"), NODE, NodeRoot(root, "/scripts"), tf_version="2.21.0")
    assert launch.script == (root / "srv" / "train.py").resolve()


def test_custom_code_root(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "edge1")
    (root / "opt" / "fl").mkdir(parents=True)
    (root / "opt" / "fl" / "train.py").write_text("")
    launch = prepare_launch(plan("/opt/fl"), NODE, NodeRoot(root, "/opt/fl"), tf_version="2.21.0")
    assert launch.script == (root / "opt" / "fl" / "train.py").resolve()
    # /code is not special any more: it is outside this node's code root
    reason = refuse(root, plan("/code"), code_root="/opt/fl")
    assert "is outside the code root /opt/fl" in reason


def test_unusable_code_roots_are_refused(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "edge1")
    assert "code root is unusable" in refuse(root, plan(), code_root="/../elsewhere")
    assert "node root itself" in refuse(root, plan(), code_root="/")


def test_dataset_and_model_urls_stay_checked_against_the_node_root(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "edge1")
    reason = refuse(root, plan(dataset_url="/../secret.txt"))
    assert "Dataset \"d1\" url '/../secret.txt' escapes the node root" in reason
    (root / "data" / "out").symlink_to(tmp_path)
    reason = refuse(root, plan(dataset_url="/data/out/x.txt"))
    assert "Dataset \"d1\" url '/data/out/x.txt' escapes the node root" in reason
    reason = refuse(root, plan(model_url="/model/../../m"))
    assert "Model \"m\" url '/model/../../m' escapes the node root" in reason
    # a Dataset url outside the code root but inside the node root is fine (data lives in /data)
    assert prepare_launch(plan(), NODE, NodeRoot(root), tf_version="2.21.0").dataset_path.name == "train.txt"


def test_edge_and_aggregator_helpers_agree(tmp_path: Path) -> None:
    """Both services check scripts with the one resolver (NodeRoot.script): the same urls pass and fail."""
    root = lay_out(tmp_path / "n")
    for url, ok in [("/code", True), ("/code/sub/../", True), ("/data", False), ("/code/../..", False)]:
        (root / "code" / "sub").mkdir(exist_ok=True)
        results = []
        try:
            prepare_launch(plan(url), NODE, NodeRoot(root), tf_version="2.21.0")
            results.append(True)
        except PlanRejectedError:
            results.append(False)
        try:
            aggregation_launch(agg_request(url), root=NodeRoot(root), node="cloud0")
            results.append(True)
        except WorkerScriptError:
            results.append(False)
        assert results == [ok, ok], url


# -- aggregator: ScriptSupervisor ----------------------------------------------------------------


def agg_request(script_dir: str, boot: str = "aggregate.py") -> ScriptRequest:
    return ScriptRequest(
        job=JOB,
        uid="u" * 32,
        namespace="default",
        worker=EffectiveWorker(
            node_name="cloud0",
            script_dir=script_dir,
            script_boot_file=boot,
            framework_type="tensorflow",
            framework_version=None,
            parameters={},
        ),
        model=ModelRef(name="m", url="/model", format="ckpt"),
        pretrained_model=None,
        participants_count=2,
    )


def supervisor(root: Path, code_root: str = DEFAULT_CODE_ROOT) -> tuple[AggregationScripts, list[object]]:
    events: list[object] = []
    return AggregationScripts(root=NodeRoot(root, code_root), node="cloud0", emit=events.append), events


AGG = "spec.aggregationWorker.workerSpec"


@pytest.mark.parametrize(
    ("script_dir", "boot", "field"),
    [
        ("/data", "evil.py", "scriptDir"),
        ("/code/../data", "evil.py", "scriptDir"),
        ("/code/../../etc", "passwd", "scriptDir"),
        ("/code", "../data/evil.py", "scriptBootFile"),
        ("/code/linked", "evil.py", "scriptDir"),
        ("/code", "link.py", "scriptBootFile"),
    ],
)
def test_aggregator_refuses_scripts_outside_the_code_root(
    tmp_path: Path, script_dir: str, boot: str, field: str
) -> None:
    root = lay_out(tmp_path / "cloud0")
    (root / "code" / "linked").symlink_to(root / "data")
    (root / "code" / "link.py").symlink_to(root / "data" / "evil.py")
    scripts, events = supervisor(root)
    with pytest.raises(WorkerScriptError) as err:
        scripts.start(agg_request(script_dir, boot))
    message = str(err.value)
    assert message.startswith(f"job {JOB}: {AGG}.{field} ")
    assert f"is outside the code root /code ({(root / 'code').resolve()})" in message
    assert scripts.running() == [] and events == []
    assert not (root / "logs").exists()  # refused before anything was started or written


def test_aggregator_code_root_comes_from_the_argument_or_fl_code_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = lay_out(tmp_path / "cloud0")

    def code_root(*args: str) -> str:
        return str(build_parser().parse_args(["--root", str(root), *args]).code_root)

    monkeypatch.delenv("FL_CODE_ROOT", raising=False)
    assert supervisor(root, code_root())[0].code_root == "/code"
    monkeypatch.setenv("FL_CODE_ROOT", "/opt/fl")
    assert supervisor(root, code_root())[0].code_root == "/opt/fl"
    assert supervisor(root, code_root("--code-root", "/srv"))[0].code_root == "/srv"
    scripts, _ = supervisor(root, code_root())
    with pytest.raises(WorkerScriptError, match="is outside the code root /opt/fl"):
        scripts.start(agg_request("/code"))


def test_aggregator_starts_a_script_inside_the_code_root(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "cloud0")
    scripts, _events = supervisor(root)
    scripts.start(agg_request("/code"))
    try:
        assert [job for job, _ in scripts.running()] in ([JOB], [])
    finally:
        scripts.stop_all(10.0)


# -- command lines -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["edge_trainer", "cloud_aggregator"])
@pytest.mark.parametrize("code_root", ["/../elsewhere", "/"])
def test_services_refuse_an_unusable_code_root(tmp_path: Path, command: str, code_root: str) -> None:
    node = "edge1" if command == "edge_trainer" else "cloud0"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FL_", "FLCTL_"))}
    proc = subprocess.run(
        [sys.executable, "-m", command, "--node", node, "--root", str(tmp_path), "--code-root", code_root,
         "--port", "1"],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "code root" in proc.stderr or "code-root" in proc.stderr
