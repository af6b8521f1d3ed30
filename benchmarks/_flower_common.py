"""What both sides of benchmarks/flower.py share and what can be tested without Flower: the data layout
(one synthetic dataset, each edge holding only its label file's images, the same files for both
frameworks), the final model's score on test.txt (one subprocess for both sides, so neither side's
process carries TensorFlow into the other's timing), and the summary (medians, ratio, accuracies)."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flctl.synth import copy_split, synthesize

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "surface_defect_detection"
EDGES = {"edge1": "1.txt", "edge2": "2.txt"}
AGGREGATOR = "cloud0"
SCORE_SCRIPT = Path(__file__).resolve().parent / "_flower_score.py"


def prepare_data(workdir: Path, scale: float, seed: int) -> Path:
    """Synthesize the dataset once under `workdir` (kept when it is already there); each edge's share under
    ``<workdir>/data/<edge>/`` (its label file and only its images). Returns test.txt's path."""
    source = workdir / "dataset-source"
    marker = workdir / "data" / f"ready-scale{scale:g}-seed{seed}"
    if not marker.is_file():
        shutil.rmtree(workdir / "data", ignore_errors=True)
        shutil.rmtree(source, ignore_errors=True)
        synthesize(source, scale=scale, seed=seed)
        for edge, labels in EDGES.items():
            copy_split(source, source / labels, edge_data(workdir, edge))
        copy_split(source, source / "test.txt", workdir / "data" / "test")
        marker.write_text("")
    return workdir / "data" / "test" / "test.txt"


def edge_data(workdir: Path, edge: str) -> Path:
    """The folder holding `edge`'s label file and images (both sides train on these very files)."""
    return workdir / "data" / edge


def score(model: Path, test_labels: Path) -> dict[str, float]:
    """The final model's scores on test.txt: accuracy, balanced_accuracy, n (a checkpoint folder or an .npz)."""
    cmd = [sys.executable, str(SCORE_SCRIPT), str(model), str(test_labels)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"scoring {model} failed: {done.stderr.strip()[-800:]}")
    scores: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return scores


@dataclass
class Run:
    """One timed run of one side."""

    side: str
    wall_s: float
    accuracy: float
    balanced_accuracy: float
    phases: dict[str, float] = field(default_factory=dict)  # where the time went (start-up, rounds, finish)


@dataclass
class Summary:
    """Medians of the wall times of this project and of one Flower side, their ratio (project / Flower) and
    each side's mean accuracies."""

    flower_side: str
    project_median_s: float
    flower_median_s: float
    ratio: float
    project_accuracy: float
    flower_accuracy: float
    project_balanced: float
    flower_balanced: float

    @property
    def accuracy_gap_points(self) -> float:
        return abs(self.project_accuracy - self.flower_accuracy) * 100


def summarize(runs: Sequence[Run], flower_side: str) -> Summary:
    """This project's runs against `flower_side`'s: medians, the ratio of the medians, mean accuracies
    (ValueError when either side ran none)."""
    ours = [r for r in runs if r.side == "project"]
    theirs = [r for r in runs if r.side == flower_side]
    if not ours or not theirs:
        raise ValueError(f"summarize needs at least one run of each side ('project' and {flower_side!r})")
    project = statistics.median(r.wall_s for r in ours)
    flower = statistics.median(r.wall_s for r in theirs)
    return Summary(
        flower_side=flower_side,
        project_median_s=project,
        flower_median_s=flower,
        ratio=project / flower,
        project_accuracy=statistics.fmean(r.accuracy for r in ours),
        flower_accuracy=statistics.fmean(r.accuracy for r in theirs),
        project_balanced=statistics.fmean(r.balanced_accuracy for r in ours),
        flower_balanced=statistics.fmean(r.balanced_accuracy for r in theirs),
    )


def median_phases(runs: Sequence[Run], side: str) -> dict[str, float]:
    """Per phase name, the median over `side`'s runs that recorded it."""
    names: dict[str, list[float]] = {}
    for run in runs:
        if run.side == side:
            for name, seconds in run.phases.items():
                names.setdefault(name, []).append(seconds)
    return {name: statistics.median(values) for name, values in names.items()}
