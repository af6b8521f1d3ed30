"""Progress while `get -w` and `wait` follow jobs: a live line per job on a terminal, nothing else otherwise.

On an interactive terminal (rich's detection: a TTY that is not ``TERM=dumb``; ``TTY_INTERACTIVE=0`` or
``TTY_COMPATIBLE=0`` turn it off, ``TTY_INTERACTIVE=1``/``TTY_COMPATIBLE=1`` force it) the jobs being
followed get one line each below the output, redrawn in place and removed at the end: a spinner, the
name, phase, round and the status message (``round 2/3: waiting for updates from edge2 (1/2 in)``). The
output itself (rows, "condition met") is printed above it, unchanged, so what a terminal keeps is exactly
what a pipe gets. Without a terminal there is no live line and the output goes straight to the stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

from flctl.printers import JobView, round_column


def _line(view: JobView) -> Text:
    message = view.message if view.status is not None else "no status yet"
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(view.name, style="bold")
    text.append(f"  {view.phase.value}  round {round_column(view.status)}")
    if message:
        text.append(f"  {message}", style="dim")
    return text


class Progress:
    """`say` prints output; `show` updates the live lines (a no-op without a terminal). A context manager."""

    def __init__(self, out: TextIO, say: Callable[[str], None]) -> None:
        self._say = say
        self._console = Console(file=out, highlight=False, emoji=False, markup=False)
        self._live: Live | None = None
        if self._console.is_interactive:
            self._live = Live(console=self._console, transient=True, refresh_per_second=8, auto_refresh=True)

    @property
    def live(self) -> bool:
        """Whether a live display is drawn (an interactive terminal)."""
        return self._live is not None

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._live is not None:
            self._live.stop()

    def say(self, text: str) -> None:
        """A line (or block) of output, above the live lines."""
        if self._live is None:
            self._say(text)
            return
        self._console.print(text, soft_wrap=True)

    def show(self, views: Sequence[JobView]) -> None:
        """The jobs being followed now (their live lines)."""
        if self._live is None:
            return
        lines = [Spinner("dots", text=_line(v), style="cyan") for v in views]
        self._live.update(Group(*lines), refresh=True)
