"""A node's root folder: where every absolute path of a spec or plan lives on that node.

Both node services resolve paths through this one class, so the cloud and the edges agree on what a
Sedna URL means on a node and on what escapes it.

A plan says ``/data/1.txt`` and ``/model`` the way Sedna's resources do; a node reads them under its
``--root``: with root ``.demo/edge1``, ``/data/1.txt`` is ``.demo/edge1/data/1.txt``. A path that
leads out of the root once ``..`` and symlinks are followed is refused, so a plan can never make a
node read or write outside the folder its operator gave it.

Scripts are held to a tighter rule: they must lie inside the node's code root (``--code-root``,
default ``/code``, a folder under the root), so a spec cannot run a file it placed in /data or /model.
`NodeRoot.script` is the one place both services check that.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from schemas._errors import PathEscapeError

__all__ = ["CODE_ROOT_ENV", "DEFAULT_CODE_ROOT", "NodeRoot"]

#: The code root when a node is given none; the environment variable that gives one.
DEFAULT_CODE_ROOT = "/code"
CODE_ROOT_ENV = "FL_CODE_ROOT"

# URLs that name remote storage. Sedna downloads these with an init container; here data never
# leaves its node and nothing is downloaded, so they are refused with a clear reason.
_REMOTE_SCHEMES = ("s3://", "http://", "https://", "hdfs://", "gs://", "oss://")


class NodeRoot:
    """Resolves plan paths under one root folder, refusing any that escape it; scripts only in its code root."""

    def __init__(self, root: Path | str, code_root: str = DEFAULT_CODE_ROOT) -> None:
        # The root itself may be a symlink (e.g. /srv/edge -> /mnt/disk/edge): compare against its
        # real location, since that is what resolved paths are compared with.
        self.path = Path(root).resolve()
        self.code_root = code_root

    def __repr__(self) -> str:
        return f"NodeRoot({str(self.path)!r}, code_root={self.code_root!r})"

    def resolve(self, url: str, what: str = "path") -> Path:
        """The real location of ``url`` under the root; raise PathEscapeError if it is not under it.

        ``what`` names the path in the message (``Dataset "d1" url``). ``file://`` is accepted; remote
        URLs are not. The path need not exist yet (a Model url is created when the model is saved).
        """
        text = url.removeprefix("file://")
        if not text.strip():
            raise PathEscapeError(f"{what} is empty", url=url, root=self.path)
        if text.startswith(_REMOTE_SCHEMES) or "://" in text:
            raise PathEscapeError(
                f"{what} {url!r} is not a local path: this node reads datasets, scripts and models only "
                f"from its root folder {self.path}",
                url=url,
                root=self.path,
            )
        relative = PurePosixPath(text.replace("\\", "/"))
        lexical = self.path.joinpath(*(p for p in relative.parts if p != "/"))
        try:
            resolved = lexical.resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # symlink loops, NUL bytes
            raise PathEscapeError(
                f"{what} {url!r} cannot be resolved under {self.path}: {exc}", url=url, root=self.path
            ) from exc
        if resolved.is_relative_to(self.path):
            return resolved
        if Path(os.path.normpath(lexical)).is_relative_to(self.path):
            reason = f"a symlink under the root points to {resolved}"
        else:
            reason = f"it resolves to {resolved}" + (" ('..' leaves the root)" if ".." in relative.parts else "")
        raise PathEscapeError(
            f"{what} {url!r} escapes the node root {self.path}: {reason}",
            url=url,
            root=self.path,
            resolved=resolved,
        )

    def code_dir(self) -> Path:
        """The real location of the node's code root (a folder under the root, not the root itself)."""
        code_root = self.code_root
        resolved = self.resolve(code_root, "the code root")
        if resolved == self.path:
            raise PathEscapeError(
                f"the code root {code_root!r} is the node root itself: give the scripts their own folder, e.g. /code",
                url=code_root,
                root=self.path,
            )
        return resolved

    def script(self, url: str, *, job: str, field: str) -> Path:
        """The real location of a script path if it lies inside the code root; PathEscapeError saying why not.

        `field` names the spec field (``spec.trainingWorkers[0].workerSpec.scriptDir``). ``..`` and
        symlinks are followed first, so a link inside the code root that points elsewhere is refused too.
        """
        code_root = self.code_root
        try:
            code_dir = self.code_dir()
        except PathEscapeError as exc:
            raise PathEscapeError(
                f"job {job}: the node's code root is unusable: {exc}", url=code_root, root=self.path
            ) from exc
        where = f"the code root {code_root} ({code_dir})"
        try:
            resolved = self.resolve(url, field)
        except PathEscapeError as exc:
            raise PathEscapeError(
                f"job {job}: {field} {url!r} is outside {where}: {exc}", url=url, root=code_dir
            ) from exc
        if not resolved.is_relative_to(code_dir):
            raise PathEscapeError(
                f"job {job}: {field} {url!r} is outside {where}: it resolves to {resolved}; "
                "this node runs scripts only from its code root",
                url=url,
                root=code_dir,
                resolved=resolved,
            )
        return resolved

    def to_url(self, path: Path | str) -> str:
        """The plan-style path of a location under the root (``ROOT/model/x`` -> ``/model/x``)."""
        real = Path(path).resolve()
        if not real.is_relative_to(self.path):
            return str(path)
        return "/" + real.relative_to(self.path).as_posix() if real != self.path else "/"
