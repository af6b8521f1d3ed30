"""What model versions a node holds: the part of its node status both services publish (`schemas.HeldModel`).

A node remembers the Model urls it wrote a model to (`ModelUrlBook`, a small JSON list under its
``state/`` folder, so a url stays listed after its job is deleted and after a restart), and reads
each url's versions from disk when it announces itself (`held_models`): the newest few, with job,
uid, round and a short digest from each version's metadata, and the version ``latest`` names.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from runtime._files import write_atomic
from runtime._model_folder import DEFAULT_KEEP_VERSIONS, latest_version, list_versions, version_metadata
from schemas import MAX_HELD_MODELS, MAX_HELD_VERSIONS, HeldModel, HeldVersion, NodeRoot, PathEscapeError

__all__ = ["ModelUrlBook", "held_models"]

_DIGEST_CHARS = 16


class ModelUrlBook:
    """The Model urls this node wrote models to, kept in `path` (at most `schemas.MAX_HELD_MODELS`, newest last)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._urls: list[str] = []
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = []  # none yet, or unreadable: the next write replaces it
        if isinstance(data, list):
            self._urls = [u for u in data if isinstance(u, str)][-MAX_HELD_MODELS:]

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(self._urls)

    def add(self, url: str) -> bool:
        """Remember `url` (written durably); False when it was already known."""
        if url in self._urls:
            return False
        self._urls = [*self._urls, url][-MAX_HELD_MODELS:]
        write_atomic(self.path, json.dumps(self._urls, indent=1).encode())
        return True


def held_models(root: NodeRoot, urls: Iterable[str], *, per_url: int = DEFAULT_KEEP_VERSIONS) -> list[HeldModel]:
    """The versions held under each url (resolved under `root`), the newest `per_url` of each (at most
    `schemas.MAX_HELD_VERSIONS`), newest first; urls holding none are left out.

    A url that names a file (``/model/final.ckpt``) has its versions in the folder that holds the file.
    """
    held = []
    for url in list(dict.fromkeys(urls))[-MAX_HELD_MODELS:]:
        try:
            path = root.resolve(url, "Model url")
        except PathEscapeError:
            continue
        folder = path if path.is_dir() else path.parent
        versions = list_versions(folder)
        if not versions:
            continue
        shown = [v for v in (_held_version(p) for p in versions[: max(1, min(per_url, MAX_HELD_VERSIONS))]) if v]
        held.append(HeldModel(url=url, latest=latest_version(folder), count=len(versions), versions=shown))
    return held


def _held_version(folder: Path) -> HeldVersion | None:
    meta = version_metadata(folder)
    if meta is None:
        return None
    uid, round_, digest, created = meta.get("uid"), meta.get("round"), meta.get("digest"), meta.get("created")
    created = created or meta.get("savedAt")
    when: datetime | None = None
    if isinstance(created, str):
        try:
            when = datetime.fromisoformat(created)
        except ValueError:
            when = None
    return HeldVersion(
        version=folder.name,
        job=str(meta["job"]),
        uid=uid if isinstance(uid, str) else None,
        round=round_ if isinstance(round_, int) else 0,
        digest=digest[:_DIGEST_CHARS] if isinstance(digest, str) else None,
        created=when,
    )
