"""Secure aggregation's round files on this node: what the edge must remember of a round across a restart.

One file per job and round, ``ROOT/state/<job>/secagg/r<r>.json`` (beside the job's outbox), JSON::

    {"uid": ..., "round": r, "secrets": RoundSecrets.to_json(), "bundle": {receiver: sealed, base64} | null,
     "masked": false, "u3": [...] | null}

It is written (`runtime.write_atomic`) before anything derived from it is published: the secrets before
the key advert, the bundle before it is published, ``masked`` before the masked update goes to the
outbox, the U3 answered for before the answer. The folder is made 0700 and each file 0600: the file
holds private keys and, once shared, this node's own pair of shares. A file of another run (uid), or one
that cannot be read, is no file: the edge sits that round out (docs/dev/secagg.md, "Resuming").
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from runtime import RoundSecrets, SecAggError, write_atomic
from schemas import check_name

__all__ = ["SecAggFiles", "SecAggRoundFile"]

_FOLDER = "secagg"
_NAME = re.compile(r"^r(\d+)\.json$")


@dataclass(frozen=True)
class SecAggRoundFile:
    """This node's part of one round: its secrets, the bundle it published, whether its masked update went
    to the outbox, and the U3 it answered for (None: not yet)."""

    uid: str
    round: int
    secrets: RoundSecrets
    bundle: dict[str, str] | None = None  # receiver -> base64 of the sealed share pair
    masked: bool = False
    u3: list[str] | None = None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "uid": self.uid,
                "round": self.round,
                "secrets": self.secrets.to_json(),
                "bundle": self.bundle,
                "masked": self.masked,
                "u3": self.u3,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SecAggRoundFile:
        """The record; ValueError saying what is wrong with it."""
        try:
            raw = json.loads(data)
            bundle, u3 = raw["bundle"], raw["u3"]
            if not isinstance(raw, dict) or not isinstance(raw["uid"], str) or not isinstance(raw["round"], int):
                raise ValueError("uid must be a string and round an integer")
            if bundle is not None and not (
                isinstance(bundle, dict) and all(isinstance(v, str) for v in [*bundle, *bundle.values()])
            ):
                raise ValueError("bundle must map receiver names to base64 strings")
            if u3 is not None and not (isinstance(u3, list) and all(isinstance(v, str) for v in u3)):
                raise ValueError("u3 must be a list of node names")
            return cls(
                uid=raw["uid"],
                round=raw["round"],
                secrets=RoundSecrets.from_json(raw["secrets"]),
                bundle=bundle,
                masked=raw["masked"] is True,
                u3=u3,
            )
        except (KeyError, TypeError, SecAggError) as exc:
            raise ValueError(f"not a secure aggregation round record: {exc}") from exc


class SecAggFiles:
    """The round files under ``state_dir`` (the outbox's), per job."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    def folder(self, job: str) -> Path:
        return self.state_dir / check_name(job, "job name") / _FOLDER

    def path(self, job: str, round_: int) -> Path:
        return self.folder(job) / f"r{round_}.json"

    def load(self, job: str, uid: str, round_: int) -> SecAggRoundFile | None:
        """Run `uid`'s record of `round_`; None when there is none, it is unreadable (ValueError is not
        raised: a broken file is a lost one) or it belongs to another run."""
        try:
            record = SecAggRoundFile.from_json(self.path(job, round_).read_bytes())
        except (OSError, ValueError):
            return None
        return record if record.uid == uid and record.round == round_ else None

    def save(self, job: str, record: SecAggRoundFile) -> None:
        """Replace the record of its round (OSError when it cannot be written: publish nothing then)."""
        folder = self.folder(job)
        folder.mkdir(parents=True, exist_ok=True)
        # write_atomic makes the file with the process umask: the folder's 0700 keeps everyone else out
        # from the start, the file's 0600 keeps it so if the folder is ever opened up.
        os.chmod(folder, 0o700)
        path = self.path(job, record.round)
        write_atomic(path, record.to_json())
        os.chmod(path, 0o600)

    def rounds(self, job: str) -> list[int]:
        """The rounds that have a file, oldest first."""
        try:
            names = [p.name for p in self.folder(job).iterdir()]
        except OSError:
            return []
        return sorted(int(m.group(1)) for m in map(_NAME.match, names) if m is not None)

    def clear_upto(self, job: str, round_: int) -> list[int]:
        """Delete the files of `round_` and older; the rounds deleted."""
        gone = [r for r in self.rounds(job) if r <= round_]
        for r in gone:
            with contextlib.suppress(OSError):
                self.path(job, r).unlink(missing_ok=True)
        return gone

    def clear(self, job: str) -> None:
        """Delete every round file of `job` and its folder (the job ended or is gone)."""
        folder = self.folder(job)
        if not folder.is_dir():
            return
        for path in folder.iterdir():
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            folder.rmdir()
