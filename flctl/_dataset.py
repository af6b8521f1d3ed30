"""`flctl dataset synth` and `flctl dataset split`: the synthetic magnetic-tile data and per-edge shares.

The generator (`flctl.synth`, numpy and pillow) is imported only when one of these commands runs, so
every other command works without it.
"""

from __future__ import annotations

from pathlib import Path

from flctl._context import Context
from flctl._errors import DatasetToolError
from flctl.printers import table


def _unavailable(exc: ImportError) -> DatasetToolError:
    return DatasetToolError(f"the dataset tools are not available ({exc}); install numpy and pillow")


def synth(ctx: Context, out: Path, *, scale: float, seed: int, size_range: tuple[int, int] | None) -> int:
    try:
        from flctl.synth import DEFECT_CLASSES, synthesize
    except ImportError as exc:
        raise _unavailable(exc) from exc
    try:
        report = synthesize(out, scale=scale, seed=seed, size_range=size_range)
    except (ValueError, OSError) as exc:
        raise DatasetToolError(f"cannot write the synthetic dataset to {out}: {exc}") from exc
    classes = dict(report.class_counts)
    defect_classes = set(DEFECT_CLASSES)
    rows = [[name, str(count), "1" if name in defect_classes else "0"] for name, count in classes.items()]
    rows.append(["total", str(sum(classes.values())), ""])
    split_rows = [
        [name, str(lines), str(report.split_defects.get(name, 0)), str(lines - report.split_defects.get(name, 0))]
        for name, lines in report.split_counts.items()
    ]
    ctx.say(
        f"synthetic magnetic-tile dataset written to {report.dataset_dir} (seed {report.seed}, scale {report.scale:g})\n\n"
        + table(["CLASS", "IMAGES", "LABEL"], rows)
        + "\n\n"
        + table(["SPLIT", "LINES", "DEFECT", "FREE"], [[str(report.out_dir / r[0]), *r[1:]] for r in split_rows])
    )
    return 0


def split(ctx: Context, dataset_root: Path, labels: Path, dest: Path) -> int:
    try:
        from flctl.synth import copy_split
    except ImportError as exc:
        raise _unavailable(exc) from exc
    try:
        copied = copy_split(dataset_root, labels, dest)
    except (ValueError, OSError) as exc:
        raise DatasetToolError(f"cannot copy the images of {labels} to {dest}: {exc}") from exc
    ctx.say(f"copied {labels.name} and the {copied} images it lists (with their masks) to {dest}")
    return 0
