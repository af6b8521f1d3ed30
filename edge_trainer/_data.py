"""Sedna-compatible label files and image preprocessing for the surface defect detection example.

A label file (Sedna's ``Dataset`` with ``format: txt``) has one sample per line::

    Magnetic-tile-defect-datasets/MT_Break/Imgs/exp1_num_304290.jpg,1

that is ``<image path relative to the label file's folder>,<0|1>`` where ``0`` means no defect
(``MT_Free``) and ``1`` any defect. There is no header; blank lines are ignored. Lines whose image is
not a sample (a defect mask, a picture of the dataset, not an image) are skipped and reported, by the
rule in `edge_trainer._samples`; a missing or unreadable image, a malformed line or a label file
without samples is a `DatasetError` whose message is one line: ``1.txt line 3: image x.jpg not found
under /data``.

Images are preprocessed exactly like Sedna's example (``keras.preprocessing.image.load_img`` then
``.resize((128, 128))`` then ``/ 255.0``) so a model trained here behaves like one trained there.
This module deliberately imports neither TensorFlow nor Keras: the edge trainer validates and loads
data before it pays TensorFlow's multi-second import, and unit tests stay fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from edge_trainer._errors import DatasetError
from edge_trainer._samples import arm_data_error_report, max_image_side, record_skip, shown_path, skip_reason
from schemas import WorkerEnv

__all__ = [
    "IMAGE_SIZE",
    "LabeledSample",
    "TxtDataParse",
    "load_dataset",
    "load_image",
    "parse_label_line",
    "read_label_file",
]

# Sedna's example resizes every tile to 128x128; the model's input layer is built for that size.
IMAGE_SIZE: tuple[int, int] = (128, 128)

_FORMAT_HINT = "expected '<relative image path>,<0|1>'"


@dataclass(frozen=True, slots=True)
class LabeledSample:
    """One line of a label file.

    ``path`` is the image path joined with the folder it is relative to; ``relpath`` is the path
    exactly as written in the label file (kept so tools can copy or re-emit the line verbatim).
    """

    path: Path
    label: int
    relpath: str


def load_image(path: Path | str, size: tuple[int, int] = IMAGE_SIZE) -> npt.NDArray[np.float32]:
    """Load one image as float32 ``H x W x 3`` in ``[0, 1]``, preprocessed like Sedna's example.

    ``size`` is ``(width, height)`` as PIL expects it. The real magnetic-tile JPEGs are single
    channel; converting to RGB replicates the grey level into three channels, which is what Keras'
    ``load_img`` (default ``color_mode="rgb"``) does and what the 3-channel input layer expects.
    The resize uses PIL's default resample filter on purpose: Sedna calls ``Image.resize`` without
    one, and a different filter would shift the pixel statistics the model was trained on.
    """
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB").resize(size)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: image file not found", path=path) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        # PIL raises OSError for truncated files and ValueError for some broken headers; both mean
        # "this file is not a usable image", which is a data problem, not a bug in the caller.
        raise DatasetError(f"{path}: cannot read image: {exc}", path=path) from exc
    # Divide in float32: Keras' img_to_array yields float32, and float64 would double the memory
    # of a ~500-image training set for no benefit.
    return np.asarray(rgb, dtype=np.float32) / np.float32(255.0)


def parse_label_line(
    line: str,
    base_dir: Path | str,
    *,
    source: Path | str | None = None,
    lineno: int | None = None,
) -> LabeledSample:
    """Parse one ``relative/path.jpg,<0|1>`` line; paths are joined with ``base_dir``.

    ``source`` and ``lineno`` only enrich the error message (the label file and the 1-based line
    number). The file system is not touched: callers decide whether images must exist, because
    Sedna lets the image root differ from the label file's folder (``original_dataset_url``).
    Raises :class:`DatasetError` for any malformed line.
    """
    where = _where(source, lineno)

    def bad(what: str) -> DatasetError:
        return DatasetError(f"{where}: {what} (line {line.strip()!r})", path=source, line=lineno)

    # Surrounding whitespace (including a CR from a file edited on Windows) is tolerated, like
    # Sedna's line.strip(); anything inside the line must match the format exactly.
    text = line.strip()
    if not text:
        raise bad(f"empty line, {_FORMAT_HINT}")
    parts = text.split(",")
    if len(parts) != 2:
        raise bad(f"{_FORMAT_HINT}, found {len(parts) - 1} commas")
    relpath, label_text = parts
    if not relpath:
        raise bad(f"image path is empty, {_FORMAT_HINT}")
    if relpath != relpath.strip():
        raise bad("image path has leading or trailing spaces")
    if label_text not in ("0", "1"):
        raise bad(f"label must be 0 or 1, got {label_text!r}")
    # Label files travel between machines: refuse paths that would make an edge read files outside
    # the dataset folder (absolute paths, "..") instead of silently following them.
    posix = PurePosixPath(relpath.replace("\\", "/"))
    if posix.is_absolute() or relpath.startswith(("/", "\\")) or (len(relpath) > 1 and relpath[1] == ":"):
        raise bad("image path must be relative to the label file's folder, got an absolute path")
    if ".." in posix.parts:
        raise bad("image path must stay inside the label file's folder ('..' is not allowed)")
    return LabeledSample(path=Path(base_dir) / Path(*posix.parts), label=int(label_text), relpath=relpath)


def _where(source: Path | str | None, lineno: int | None) -> str:
    """``1.txt line 3``: the label file by name, as the user wrote it in the Dataset's url."""
    name = Path(source).name if source is not None else "<label line>"
    return f"{name} line {lineno}" if lineno is not None else name


def _missing(label_file: Path, number: int, sample: LabeledSample, root: Path) -> DatasetError:
    return DatasetError(
        f"{_where(label_file, number)}: image {sample.relpath} not found under {shown_path(root)}",
        path=label_file,
        line=number,
    )


def _no_samples(label_file: Path, lines: int) -> DatasetError:
    what = (
        "the label file is empty" if not lines else f"all {lines} lines were skipped (see the worker's skipped lines)"
    )
    return DatasetError(f"{label_file.name}: no samples: {what}", path=label_file)


def _read_lines(path: Path) -> list[str]:
    """Return the label file's lines, mapping I/O and encoding problems to :class:`DatasetError`."""
    try:
        # newline="" keeps "\r" visible to the parser's strip() instead of letting Python
        # translate it, and utf-8 is what Sedna's (and our) label files are written in.
        with path.open(encoding="utf-8", newline="") as fin:
            return fin.read().split("\n")
    except FileNotFoundError as exc:
        raise DatasetError(f"label file {shown_path(path)} not found", path=path) from exc
    except IsADirectoryError as exc:
        raise DatasetError(f"label file {shown_path(path)} is a directory", path=path) from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"label file {shown_path(path)} is not UTF-8 text: {exc}", path=path) from exc
    except OSError as exc:
        raise DatasetError(f"cannot read label file {shown_path(path)}: {exc.strerror or exc}", path=path) from exc


def _numbered_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based line numbers (numbers count blank lines too)."""
    return [(number, line) for number, line in enumerate(_read_lines(path), start=1) if line.strip()]


def _read_numbered_samples(
    label_file: Path, image_root: Path | str | None, check_images: bool
) -> list[tuple[int, LabeledSample]]:
    """Samples of a label file with their 1-based line numbers (kept for error messages).

    With `check_images`, lines that are not samples are skipped (and recorded) and a missing image is
    a data error; without, every well-formed line is returned and the file system is not touched.
    """
    arm_data_error_report()
    root = Path(image_root) if image_root is not None else label_file.parent
    lines = _numbered_lines(label_file)
    max_side = max_image_side() if check_images else 0
    numbered: list[tuple[int, LabeledSample]] = []
    for number, line in lines:
        sample = parse_label_line(line, root, source=label_file, lineno=number)
        if check_images:
            reason = skip_reason(sample.path, max_side)
            if reason is not None:
                record_skip(f"{_where(label_file, number)}: {sample.relpath}: {reason}")
                continue
            if not sample.path.is_file():
                raise _missing(label_file, number, sample, root)
        numbered.append((number, sample))
    if check_images and not numbered:
        raise _no_samples(label_file, len(lines))
    return numbered


def read_label_file(
    path: Path | str,
    *,
    image_root: Path | str | None = None,
    check_images: bool = True,
) -> list[LabeledSample]:
    """Read a Sedna txt label file into samples, in file order.

    Image paths are relative to ``image_root``, which defaults to the label file's folder (Sedna's
    convention; pass another folder to mimic its ``original_dataset_url``). With ``check_images``
    every referenced image must exist, so a bad dataset fails here, at startup, with the label
    file and line in the message, rather than minutes into training.
    """
    return [sample for _, sample in _read_numbered_samples(Path(path), image_root, check_images)]


def load_dataset(
    label_file: Path | str,
    size: tuple[int, int] = IMAGE_SIZE,
    *,
    image_root: Path | str | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Load every image a label file lists: ``x`` float32 ``(N, H, W, 3)``, ``y`` raw labels ``(N,)``.

    ``y`` holds the raw 0/1 labels (1 = defect); one-hot encoding is the model's business.
    """
    label_path = Path(label_file)
    numbered = _read_numbered_samples(label_path, image_root, check_images=True)
    width, height = size
    # Preallocate instead of stacking a list: stacking briefly needs twice the memory.
    x = np.empty((len(numbered), height, width, 3), dtype=np.float32)
    y = np.empty((len(numbered),), dtype=np.int64)
    for i, (number, sample) in enumerate(numbered):
        try:
            x[i] = load_image(sample.path, size)
        except DatasetError as exc:
            raise _unreadable(label_path, number, sample.relpath, exc.__cause__ or exc) from exc
        y[i] = sample.label
    return x, y


def _unreadable(label_file: Path, number: int, image: str, cause: BaseException) -> DatasetError:
    reason = getattr(cause, "strerror", None) or str(cause)
    return DatasetError(
        f"{_where(label_file, number)}: image {image} cannot be read: {reason}", path=label_file, line=number
    )


def _as_array_if_uniform(items: list[Any]) -> npt.NDArray[Any] | list[Any]:
    """Stack ``items`` when they are equally shaped numpy arrays, else return the list unchanged."""
    if not items or not all(isinstance(item, np.ndarray) for item in items):
        return items
    first_shape = items[0].shape
    if any(item.shape != first_shape for item in items):
        return items
    return np.stack(items)


class TxtDataParse:
    """Parser for Sedna txt label files, mirroring ``sedna.datasources.TxtDataParse``.

    Usage, as in Sedna's example::

        train_data = TxtDataParse(data_type="train", func=image_process)
        train_data.parse(train_dataset_url)
        train_data.x, train_data.y

    Behaviour kept from Sedna:

    * ``func(line)`` receives each stripped, non-blank line and returns a sequence whose item 0
      goes to ``x`` and item 1 to ``y`` (``y`` gets 0 when the sequence has one item); an empty
      result skips the line. With ``use_raw=True`` the whole result goes to ``x``.
    * ``data_type="test"`` collects no labels: ``y`` stays empty.
    * A ``None`` or empty file argument is skipped, so ``parse(config.test_dataset_url)`` with no
      test set configured leaves an empty dataset whose ``len()`` is 0 (falsy).
    * Every ``parse()`` call replaces the previous content.

    Deliberate differences, each because Sedna's behaviour hides data errors:

    * Every line is validated against the label format first, and a bad line raises
      :class:`DatasetError` naming the file and line; errors raised by ``func`` (missing image,
      unreadable JPEG) are re-raised the same way. Sedna calls ``func`` on blank lines too and
      lets any exception escape without location.
    * A label file that does not exist raises :class:`DatasetError`; Sedna silently skips it and
      trains on nothing.
    * Without ``func``, ``x`` holds image paths joined with the label file's folder (so files from
      different folders can be merged) and ``y`` the integer labels. Sedna splits lines on
      whitespace, which for this comma format yields the whole line as ``x`` and 0 as ``y``.
    * ``x``/``y`` are numpy arrays only when ``func`` returns equally shaped arrays (stacked to
      ``(N, ...)``), lists otherwise; Sedna's ``np.array(list_of_paths)`` adds nothing useful.
    * A ``func`` given by name (Sedna's ClassFactory registry) is not supported.
    """

    def __init__(self, data_type: str = "train", func: Callable[[str], Any] | None = None) -> None:
        if func is not None and not callable(func):
            raise TypeError(f"func must be callable or None, got {type(func).__name__}")
        self.data_type = data_type
        self.process_func: Callable[[str], Any] | None = func
        self.x: npt.NDArray[Any] | list[Any] = []
        self.y: npt.NDArray[Any] | list[Any] = []

    @property
    def is_test_data(self) -> bool:
        """True for ``data_type="test"``, whose labels Sedna does not collect."""
        return self.data_type == "test"

    def num_examples(self) -> int:
        """Number of samples parsed so far."""
        return len(self.x)

    def __len__(self) -> int:
        return self.num_examples()

    def parse(self, *files: Path | str | None, **kwargs: Any) -> None:
        """Read the given label files (in order) into ``x`` and ``y``; see the class docstring."""
        use_raw = bool(kwargs.get("use_raw"))
        x_data: list[Any] = []
        y_data: list[Any] = []
        for file in files:
            if file is None or str(file) == "":
                continue
            label_file = Path(file)
            if self.process_func is None:
                for sample in read_label_file(label_file):
                    x_data.append(sample if use_raw else str(sample.path))
                    if not use_raw and not self.is_test_data:
                        y_data.append(sample.label)
                continue
            arm_data_error_report()
            lines = _numbered_lines(label_file)
            # Sedna's image_process joins paths with ORIGINAL_DATASET_URL's folder when it is set.
            original = os.environ.get(WorkerEnv.ORIGINAL_DATASET_URL)
            root = Path(original).parent if original else label_file.parent
            max_side = max_image_side()
            kept = 0
            for number, line in lines:
                text = line.strip()
                # Validate before handing the line over, so a malformed line gets our message
                # instead of whatever unpacking error the user's func happens to raise; apply the
                # sample rule. A missing image is left to func (it may read images from elsewhere).
                sample = parse_label_line(text, root, source=label_file, lineno=number)
                reason = skip_reason(sample.path, max_side)
                if reason is not None:
                    record_skip(f"{_where(label_file, number)}: {sample.relpath}: {reason}")
                    continue
                kept += 1
                result = self._call_func(self.process_func, text, label_file, number, sample=sample, root=root)
                if result is None or len(result) == 0:
                    continue
                if use_raw:
                    x_data.append(result)
                    continue
                x_data.append(result[0])
                if not self.is_test_data:
                    y_data.append(result[1] if len(result) > 1 else 0)
            if not kept:
                raise _no_samples(label_file, len(lines))
        self.x = _as_array_if_uniform(x_data)
        self.y = _as_array_if_uniform(y_data)

    @staticmethod
    def _call_func(
        func: Callable[[str], Any], line: str, label_file: Path, number: int, *, sample: LabeledSample, root: Path
    ) -> Sequence[Any]:
        """Run ``func(line)``, turning data errors into one-line :class:`DatasetError` naming the line."""
        try:
            result: Sequence[Any] = func(line)
        except DatasetError as exc:
            if exc.line is not None and exc.path == label_file:
                raise
            if isinstance(exc.__cause__, FileNotFoundError) or not Path(exc.path or sample.path).exists():
                raise _missing(label_file, number, sample, root) from exc
            raise _unreadable(label_file, number, sample.relpath, exc.__cause__ or exc) from exc
        except FileNotFoundError as exc:
            if exc.filename is None or Path(exc.filename) == sample.path:
                raise _missing(label_file, number, sample, root) from exc
            raise DatasetError(
                f"{_where(label_file, number)}: image {shown_path(Path(exc.filename))} not found",
                path=label_file,
                line=number,
            ) from exc
        except (OSError, ValueError) as exc:
            raise DatasetError(
                f"{_where(label_file, number)}: cannot load the sample: {exc}", path=label_file, line=number
            ) from exc
        return result
