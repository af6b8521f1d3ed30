"""What `flctl create` checks before it publishes anything: `--dry-run` (kubectl's --dry-run=client: the
same validation as create, no connection, nothing published) and the size of every document, against the
spec limit and against the broker connection's packet limit."""

from __future__ import annotations

from pathlib import Path

import pytest

from flctl.cli import main
from schemas import MAX_DOCUMENT_BYTES, Topics
from tests.helpers.flctl import FlctlRunner, retained
from tests.helpers.mqtt import BrokerHandle, free_port

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "surface_defect_detection" / "surface-defect-detection.yaml"
JOB = "surface-defect-detection"
DATASET = """\
apiVersion: sedna.io/v1alpha1
kind: Dataset
metadata: {name: ds1}
spec: {url: /data/1.txt, format: txt, nodeName: edge1}
"""
BAD_MODEL = "apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata: {name: m}\nspec: {format: ckpt}\n"


@pytest.fixture
def flctl(broker: BrokerHandle, capsys: pytest.CaptureFixture[str]) -> FlctlRunner:
    return FlctlRunner(broker, capsys)


@pytest.mark.parametrize("flag", ["--dry-run", "--dry-run=client"])
def test_dry_run_prints_what_would_be_created_and_publishes_nothing(
    flctl: FlctlRunner, broker: BrokerHandle, tmp_path: Path, flag: str
) -> None:
    """Every document of a directory (the seed's four, a Dataset file) is validated; nothing reaches the broker."""
    (tmp_path / "seed.yaml").write_text(SEED.read_text())
    (tmp_path / "ds.yml").write_text(DATASET)

    run = flctl("create", "-f", str(tmp_path), flag)

    assert (run.code, run.err) == (0, "")
    assert run.out.splitlines() == [
        "dataset.sedna.io/ds1 created (dry run)",
        "dataset.sedna.io/edge1-surface-defect-detection-dataset created (dry run)",
        "dataset.sedna.io/edge2-surface-defect-detection-dataset created (dry run)",
        "model.sedna.io/surface-defect-detection-model created (dry run)",
        f"federatedlearningjob.sedna.io/{JOB} created (dry run)",
    ]
    assert retained(broker, Topics().everything()) == {}


def test_dry_run_names_every_bad_document_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Errors of several files at once, each naming its document and field; exit 1; no broker needed at all."""
    (tmp_path / "a.yaml").write_text(DATASET + "---\n" + BAD_MODEL)
    (tmp_path / "b.yaml").write_text(SEED.read_text().replace('value: "3"', 'value: "0"'))

    code = main(
        [
            "--port",
            str(free_port()),
            "create",
            "--dry-run",
            "-f",
            str(tmp_path / "a.yaml"),
            "-f",
            str(tmp_path / "b.yaml"),
        ]
    )

    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert f'{tmp_path / "a.yaml"} document 2/2 (Model "m") is invalid:' in err
    assert "spec.url: required field is missing" in err
    assert f'{tmp_path / "b.yaml"} document 4/4 (FederatedLearningJob "{JOB}") is invalid:' in err
    assert "exit_round" in err


def test_dry_run_does_not_connect(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Valid documents and nothing listening on the port: still exit 0 (create itself would exit 3)."""
    (tmp_path / "ds.yaml").write_text(DATASET)
    port = str(free_port())

    assert main(["--port", port, "create", "-f", str(tmp_path / "ds.yaml"), "--dry-run"]) == 0
    assert capsys.readouterr().out == "dataset.sedna.io/ds1 created (dry run)\n"
    assert main(["--port", port, "--timeout", "1", "create", "-f", str(tmp_path / "ds.yaml")]) == 3


def test_dry_run_server_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "ds.yaml").write_text(DATASET)

    assert main(["create", "-f", str(tmp_path / "ds.yaml"), "--dry-run=server"]) == 2
    assert "--dry-run=server is not supported" in capsys.readouterr().err


def test_a_document_that_grows_past_the_limit_when_expanded_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """About 100 kB of YAML whose aliases make a 1.2 MB document as published (flctl publishes it expanded)."""
    value = "v" * 100_000
    keys = ", ".join(f"k{i}: *v" for i in range(12))
    path = tmp_path / "aliases.yaml"
    path.write_text(
        f"apiVersion: sedna.io/v1alpha1\nkind: Model\nmetadata:\n  name: m\n  labels: {{base: &v {value}}}\n"
        f"  annotations: {{{keys}}}\nspec: {{url: /model, format: ckpt}}\n"
    )

    code = main(["--port", str(free_port()), "create", "--dry-run", "-f", str(path)])

    err = capsys.readouterr().err
    assert code == 1
    assert f'{path}: Model "m" is ' in err
    assert f"bytes as published, over the {MAX_DOCUMENT_BYTES}-byte limit of a spec document" in err


@pytest.mark.parametrize("broker", [{"max_packet_size": 16384}], indirect=True)
def test_a_document_over_the_brokers_packet_limit_is_refused_before_publishing(
    flctl: FlctlRunner, broker: BrokerHandle, tmp_path: Path
) -> None:
    """A broker with a small max_packet_size would disconnect flctl mid-create: nothing is published instead,
    and the message gives the limit."""
    path = tmp_path / "two.yaml"
    big = BAD_MODEL.replace("{format: ckpt}", "{url: /model, format: ckpt}").replace(
        "name: m}", "name: m, annotations: {a: %s}}"
    )
    path.write_text(DATASET + "---\n" + big % ("x" * 20_000))

    run = flctl("create", "-f", str(path))

    assert (run.code, run.out) == (1, "")
    assert f'{path} document 2/2: Model "m" is ' in run.err
    # the session keeps 1 KiB of each packet for the topic and header
    assert f"bytes, over the {16384 - 1024}-byte payload limit of this broker connection" in run.err
    assert run.err.rstrip().endswith("nothing was published")
    assert retained(broker, Topics().everything()) == {}
