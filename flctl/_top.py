"""`flctl top fl NAME` (also `flctl get fl NAME --metrics`): a job's rounds, one row each.

ROUND, WORKERS (updates aggregated), SAMPLES, DURATION, then the training metrics (the participants'
local fit, before aggregation) and the evaluation metrics (the round's global model on the edges'
held-out data) that some round has, and LEFT OUT when a round closed without someone.

Where the records come from is pluggable: each `RoundSource` names the topics it needs and turns what
the broker holds into `RoundRecord`s; the records of all sources are merged by round number, a later
source's record of a round replacing an earlier one's. `StatusRounds` reads the job status's `rounds`
(the newest 5 summaries), `RetainedRoundRecords` the full record every closed round keeps on its own
retained topic (``.../rounds/<r>/record``), so the table has every round of a long job. `read_rounds` is
the one reader of a job's rounds: `flctl report` plots what it returns.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from typing import Protocol

from pydantic import ValidationError

from flctl._context import Context
from flctl._errors import NotFoundError, UsageError
from flctl._get import subscriptions
from flctl._kinds import JOBS, resolve
from flctl.printers import JobView, Retained, collect_jobs, round_rows, rounds_table, sites_line
from schemas import Channel, JobStatus, RoundRecord, TopicError, Topics


class RoundSource(Protocol):
    """One place a job's round records are read from."""

    def filters(self, topics: Topics, job: str) -> list[str]:
        """The subscriptions whose retained messages this source reads (besides the job's spec and status)."""
        ...

    def records(
        self, topics: Topics, job: str, retained: Mapping[str, Retained], status: JobStatus | None
    ) -> list[RoundRecord]:
        """The records it finds, in any order."""
        ...


class StatusRounds:
    """The rounds the job status keeps (`JobStatus.rounds`)."""

    def filters(self, topics: Topics, job: str) -> list[str]:
        return []  # the status is read anyway

    def records(
        self, topics: Topics, job: str, retained: Mapping[str, Retained], status: JobStatus | None
    ) -> list[RoundRecord]:
        return list(status.rounds) if status is not None else []


class RetainedRoundRecords:
    """The full record of every closed round, retained on its own topic by the aggregator."""

    def filters(self, topics: Topics, job: str) -> list[str]:
        return [topics.job_round_records(job)]

    def records(
        self, topics: Topics, job: str, retained: Mapping[str, Retained], status: JobStatus | None
    ) -> list[RoundRecord]:
        found: list[RoundRecord] = []
        for topic, message in retained.items():
            try:
                parsed = topics.parse(topic)
            except TopicError:
                continue
            if parsed.channel is not Channel.ROUND_RECORD or parsed.job != job or not message.payload:
                continue
            try:
                found.append(RoundRecord.model_validate_json(message.payload))
            except ValidationError:
                continue  # an unreadable record: the status's summary of that round still shows
        return found


SOURCES: tuple[RoundSource, ...] = (StatusRounds(), RetainedRoundRecords())


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`flctl top`'s own arguments."""
    p.add_argument("type", nargs="?", metavar="TYPE", help="federatedlearningjobs (fl)")
    p.add_argument("names", nargs="*", metavar="NAME")


def merged_records(
    sources: Sequence[RoundSource], topics: Topics, job: str, retained: Mapping[str, Retained], status: JobStatus | None
) -> list[RoundRecord]:
    """Every source's records, by round; a later source's record of a round wins."""
    by_round: dict[int, RoundRecord] = {}
    for source in sources:
        for record in source.records(topics, job, retained, status):
            by_round[record.round] = record
    return [by_round[r] for r in sorted(by_round)]


def read_rounds(ctx: Context, name: str, sources: Sequence[RoundSource] = SOURCES) -> tuple[JobView, list[RoundRecord]]:
    """Job `name`'s view and the records of its closed rounds (merged from `sources`), from one snapshot of
    the retained topics; NotFoundError when the job has no retained spec. `flctl report` reads here too."""
    with ctx.client() as client:
        topics = client.topics
        filters = subscriptions(topics, JOBS, [name]) + [f for s in sources for f in s.filters(topics, name)]
        retained = client.snapshot(filters)
    view: JobView | None = next((v for v in collect_jobs(topics, retained) if v.name == name), None)
    if view is None:
        raise NotFoundError(JOBS.plural, name)
    return view, merged_records(sources, topics, name, retained, view.status)


def top(ctx: Context, type_word: str, names: Sequence[str], sources: Sequence[RoundSource] = SOURCES) -> int:
    if resolve(type_word) is not JOBS:
        raise UsageError("flctl top works on federatedlearningjobs (fl) only")
    if len(names) != 1:
        raise UsageError("flctl top fl takes one job name")
    view, records = read_rounds(ctx, names[0], sources)
    if not records:
        ctx.note(f"No rounds closed yet ({view.phase.value}: {view.message}).")
        return 0
    ctx.say(rounds_table(round_rows(records)))
    away = sites_line(view.status)
    if away:  # the open round may be waiting for them: their updates wait on the site broker
        ctx.note(f"{away}.")
    return 0
