"""`flctl delete TYPE NAME...` and `flctl delete -f FILE...`: clear the retained spec (an empty retained payload).

The controller sees the deletion on the spec topic and tears the job down (plan, workers, status).
A name without a retained spec is NotFound, like kubectl; the other names are still deleted.
Jobs are deleted before the Models and Datasets they name.
"""

from __future__ import annotations

from collections.abc import Sequence

from flctl._context import Context
from flctl._create import load_documents
from flctl._errors import NotFoundError, UsageError
from flctl._kinds import DATASETS, JOBS, MODELS, ResourceType, for_kind, resolve
from flctl.printers import deleted_line

_ORDER = {JOBS: 0, MODELS: 1, DATASETS: 2}


def delete(ctx: Context, type_word: str | None, names: Sequence[str], files: Sequence[str]) -> int:
    targets: list[tuple[ResourceType, str]]
    if files:
        if type_word is not None or names:
            raise UsageError("give either -f FILE or TYPE NAME..., not both")
        targets = [(for_kind(d.kind), d.name) for d in load_documents(files, ctx)]
    else:
        if type_word is None or not names:
            raise UsageError("delete needs TYPE NAME... (e.g. flctl delete fl surface-defect-detection) or -f FILE")
        rtype = resolve(type_word, (JOBS, DATASETS, MODELS))
        targets = [(rtype, n) for n in dict.fromkeys(names)]
    targets.sort(key=lambda t: _ORDER[t[0]])
    failures = 0
    with ctx.client() as client:
        spec_topics = []
        for rtype, name in targets:
            assert rtype.kind is not None  # resolve() and for_kind() give spec types only
            spec_topics.append(client.topics.spec(rtype.kind, name))
        retained = client.snapshot(spec_topics)
        for (rtype, name), topic in zip(targets, spec_topics, strict=True):
            if topic not in retained:
                ctx.fail(NotFoundError(rtype.plural, name))
                failures += 1
                continue
            if ctx.publish_one(client, topic, b""):
                ctx.say(deleted_line(rtype.qualified, name))
            else:
                failures += 1
    return 1 if failures else 0
