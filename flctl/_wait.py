"""`flctl wait fl NAME... --for=condition=Succeeded --timeout=30m`: kubectl's wait, for jobs.

It reads the jobs' retained spec and status as `get -w` does and returns as soon as every named job
is decided: 0 when the condition holds for all; 1 when one can no longer reach it (a job that Failed
while waiting for Succeeded, a job deleted while waiting for a condition, a name that does not exist);
4 when --timeout runs out first, with kubectl's "timed out waiting for the condition on
federatedlearningjobs/NAME" for each job still undecided. On a terminal each job waited for has a live
line (phase, round, message) until it is decided (`flctl._progress`). A job's phase only moves forward
(Pending, Running, then Succeeded or Failed), which is what makes "can no longer hold" a sure verdict.
"""

from __future__ import annotations

import argparse
import enum
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flctl._client import BrokerClient
from flctl._context import Context
from flctl._errors import FlctlError, JobFailedError, NotFoundError, UsageError, WaitTimeoutError
from flctl._get import subscriptions
from flctl._kinds import JOBS, resolve
from flctl._progress import Progress
from flctl.printers import JobView, Retained, collect_jobs
from schemas import Phase

# kubectl's default --timeout; a negative one means a week, as kubectl has it.
DEFAULT_WAIT = 30.0
_WEEK = 7 * 24 * 3600.0
_SLICE = 1.0
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_DURATION_PART = re.compile(rf"({_NUMBER.pattern})(ms|h|m|s)")
# Condition names (case-insensitive, as in kubectl) and the phase each one means. Complete is the
# condition type our status writes for Succeeded, Training the one for Running.
_CONDITIONS = {
    "succeeded": Phase.SUCCEEDED,
    "complete": Phase.SUCCEEDED,
    "failed": Phase.FAILED,
    "running": Phase.RUNNING,
    "training": Phase.RUNNING,
}


def duration(text: str) -> float:
    """An argparse type: Go's durations as kubectl takes them (30s, 5m, 1h30m, 500ms) or plain seconds;
    0 checks once, a negative duration means a week."""
    body = text.strip()
    negative = body.startswith("-")
    body = body.lstrip("+-")
    if _NUMBER.fullmatch(body):
        seconds = float(body)
    else:
        seconds, pos = 0.0, 0
        for match in _DURATION_PART.finditer(body):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos == 0 or pos != len(body):
            raise argparse.ArgumentTypeError(f"expected a duration like 30s, 5m, 1h30m (or seconds), got {text!r}")
    return _WEEK if negative and seconds > 0 else seconds


@dataclass(frozen=True)
class WaitFor:
    """What --for asks: a phase (`condition=Succeeded`), or that the job is gone (`delete`)."""

    text: str
    phase: Phase | None  # None: delete

    @classmethod
    def parse(cls, text: str) -> WaitFor:
        """An argparse type for --for."""
        if text == "delete":
            return cls(text, None)
        name = text.removeprefix("condition=")
        if name.lower().endswith("=true"):
            name = name[: -len("=true")]
        phase = _CONDITIONS.get(name.lower()) if text.startswith("condition=") else None
        if phase is None:
            raise argparse.ArgumentTypeError(
                f"expected delete or condition=NAME with NAME one of Succeeded, Failed, Running "
                f"(Complete and Training are the same), got {text!r}"
            )
        return cls(text, phase)


class _Verdict(enum.Enum):
    PENDING = "pending"
    MET = "met"
    IMPOSSIBLE = "impossible"


@dataclass(frozen=True)
class WaitRequest:
    type_word: str
    names: tuple[str, ...]
    every: bool
    wait_for: WaitFor
    timeout: float


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`flctl wait`'s own arguments (its --timeout is kubectl's: how long to wait)."""
    p.add_argument("type", metavar="TYPE", help="federatedlearningjobs (fl)")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", dest="every", action="store_true", help="every job that exists when the wait starts")
    p.add_argument(
        "--for",
        dest="wait_for",
        required=True,
        type=WaitFor.parse,
        metavar="CONDITION",
        help="condition=Succeeded, condition=Failed, condition=Running, or delete",
    )
    p.add_argument(
        "--timeout",
        dest="wait_timeout",
        type=duration,
        default=DEFAULT_WAIT,
        metavar="DURATION",
        help="how long to wait: 30s, 5m, 1h, ... (default 30s; 0 checks once; negative: a week). The bound on "
        "each broker operation is the global --timeout, given before the command here",
    )


def wait(ctx: Context, request: WaitRequest) -> int:
    if resolve(request.type_word) is not JOBS:
        raise UsageError("flctl wait works on federatedlearningjobs (fl) only")
    if request.every == bool(request.names):
        raise UsageError("give job names or --all (not both)")
    deadline = time.monotonic() + request.timeout
    with ctx.client() as client:
        filters = subscriptions(client.topics, JOBS, () if request.every else request.names)
        jobs = _jobs(client, client.snapshot(filters))
        names = sorted(jobs) if request.every else list(dict.fromkeys(request.names))
        if not names:
            raise FlctlError("no matching resources found")
        with Progress(ctx.out, ctx.say) as progress:
            return _await(ctx, client, request.wait_for, names, jobs, deadline=deadline, progress=progress)


def _jobs(client: BrokerClient, retained: Mapping[str, Retained]) -> dict[str, JobView]:
    return {v.name: v for v in collect_jobs(client.topics, retained)}


def _await(
    ctx: Context,
    client: BrokerClient,
    wait_for: WaitFor,
    names: Sequence[str],
    jobs: dict[str, JobView],
    *,
    deadline: float,
    progress: Progress,
) -> int:
    pending = list(names)
    failures = 0
    first = True
    while True:
        for name in list(pending):
            verdict, error = _judge(wait_for, name, jobs.get(name), first=first)
            if verdict is _Verdict.MET:
                progress.say(f"{JOBS.qualified}/{name} condition met")
            elif verdict is _Verdict.IMPOSSIBLE:
                assert error is not None
                ctx.fail(error)
                failures += 1
            if verdict is not _Verdict.PENDING:
                pending.remove(name)
        first = False
        if not pending:
            return 1 if failures else 0
        progress.show([jobs[n] for n in pending if n in jobs])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            for name in pending:
                ctx.fail(WaitTimeoutError(f"timed out waiting for the condition on {JOBS.plural}/{name}"))
            return 1 if failures else WaitTimeoutError.exit_code
        if client.changes(min(remaining, _SLICE)):
            jobs = _jobs(client, client.latest)


def _judge(wait_for: WaitFor, name: str, view: JobView | None, *, first: bool) -> tuple[_Verdict, FlctlError | None]:
    if wait_for.phase is None:  # delete
        return (_Verdict.MET, None) if view is None else (_Verdict.PENDING, None)
    if view is None:
        if first:
            return _Verdict.IMPOSSIBLE, NotFoundError(JOBS.plural, name)
        return _Verdict.IMPOSSIBLE, JobFailedError(
            f"{JOBS.plural}/{name} was deleted while waiting for {wait_for.text}"
        )
    phase = view.phase
    if phase is wait_for.phase:
        return _Verdict.MET, None
    # Phases only move forward: past Running there is no way back, and Succeeded and Failed are final.
    if phase.finished:
        why = view.status.message if view.status is not None and view.status.message else "no message"
        return _Verdict.IMPOSSIBLE, JobFailedError(
            f"{JOBS.plural}/{name} is {phase.value}, so {wait_for.text} can no longer hold: {why}"
        )
    return _Verdict.PENDING, None
