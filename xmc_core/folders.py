"""Folders that xmc writes: model folders and their parts, fine-tuning checkpoints, generated
datasets and the Dagster artifact store.

Each such folder carries a marker file, `.xmc-folder` (JSON: what kind of folder, which xmc wrote
it), and is written atomically (`atomic_dir`: built under a temporary sibling name, then swapped
into place). xmc creates a missing path, fills an empty folder, or replaces a folder of the same
kind that it wrote itself (a model by a model, a generated dataset by a generated dataset); it
never puts anything in place of, or deletes, a folder or file that it did not write (a user's
project folder given as `--model`, say: TextGrocery#30, tensorflow#20061), nor one of another
kind (a generated dataset given as `--model`, a model's `ranker/` part, an artifact store's root).
Such a path is a `PathInUseError` naming it, raised before any work is done.

What counts as "written by xmc, of kind K":
- the folder's marker says K;
- or it lies strictly inside an artifact store (an ancestor, after resolving ".." and symbolic
  links, holds a marker of kind "artifacts": every path below the store's root is built by xmc from
  a dataset and an asset name);
- or it was written by an xmc from before the marker: a model folder (`params.json` holding an xmc
  `format_version` and `method`) or a fine-tuning checkpoint (`state.json` with `levels_done`).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

__all__ = ["MARKER", "ARTIFACTS", "PathInUseError", "folder_kind", "is_xmc_folder", "check_replaceable", "mark",
           "atomic_dir", "remove_xmc_folder", "folder_bytes"]

#: the marker file of a folder xmc wrote
MARKER = ".xmc-folder"
#: the kind of an artifact store's root: everything below it is xmc's
ARTIFACTS = "artifacts"


class PathInUseError(FileExistsError):
    """A path xmc was asked to write holds something xmc did not write (one line, names it)."""


def _read_json(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def folder_kind(path: str | os.PathLike) -> str | None:
    """The kind recorded in `path`'s marker ("model", "featurizer", "ranker", "encoder",
    "checkpoint", "dataset", "artifacts"), or that of a folder an xmc from before the marker wrote
    ("model", "checkpoint"); None when `path` is not a folder xmc wrote."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return None
    meta = _read_json(path / MARKER)
    if meta is not None and isinstance(meta.get("kind"), str):
        return meta["kind"]
    params = _read_json(path / "params.json")
    if params is not None and isinstance(params.get("format_version"), int) and "method" in params:
        return "model"
    state = _read_json(path / "state.json")
    if state is not None and isinstance(state.get("levels_done"), int):
        return "checkpoint"
    return None


def _inside_artifact_store(path: Path) -> bool:
    """Whether `path`, resolved, lies strictly below the root of an artifact store."""
    for parent in path.resolve().parents:
        if folder_kind(parent) == ARTIFACTS:
            return True
    return False


def is_xmc_folder(path: str | os.PathLike, kind: str | None = None) -> bool:
    """Whether `path` is a folder xmc wrote (of `kind`, when given; see the module docstring)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        return False
    found = folder_kind(path)
    if found is not None and (kind is None or found == kind):
        return True
    return found != ARTIFACTS and _inside_artifact_store(path)


def check_replaceable(path: str | os.PathLike, what: str = "output folder", kind: str | None = None) -> Path:
    """`path`, when xmc may write a folder of `kind` there: nothing exists there yet, an empty
    folder, or a folder xmc wrote of that kind (any kind when None).

    `what` names the path's role in the message ("--model", "dataset folder", ...).

    Raises:
        PathInUseError: a file, a symbolic link, a folder xmc did not write or one of another kind
            is at `path`; the message names it and says what to do. Nothing is touched.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return path
    if path.is_symlink():
        raise PathInUseError(f"{path}: {what}: a symbolic link; give the folder it points to, or a new path")
    if not path.is_dir():
        raise PathInUseError(f"{path}: {what}: an existing file; give a new path, or remove the file yourself")
    shown = sorted(p.name for p in path.iterdir())
    if not shown or is_xmc_folder(path, kind):
        return path
    found = folder_kind(path)
    if found is not None:
        raise PathInUseError(f"{path}: {what}: a {found} folder that xmc wrote, not a {kind} folder; give "
                             "another path")
    held = ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "")
    raise PathInUseError(
        f"{path}: {what}: an existing folder that xmc did not write (no {MARKER} marker; it holds {held}); "
        "xmc replaces only folders it wrote: give a new path, or remove this one yourself")


def mark(folder: str | os.PathLike, kind: str) -> None:
    """Write the marker of a folder of `kind` into `folder` (which exists), atomically: a
    concurrent reader sees no marker or a whole one."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        xmc_version = version("xmc")
    except PackageNotFoundError:
        xmc_version = "unknown"
    folder = Path(folder)
    tmp = folder / f"{MARKER}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"kind": kind, "xmc_version": xmc_version}) + "\n", encoding="utf-8")
    os.replace(tmp, folder / MARKER)


class atomic_dir:
    """Context manager: build a folder of `kind` under a temporary sibling name, put it in place on
    success.

    `path` must be missing, empty, or a folder of `kind` xmc wrote (`check_replaceable`, checked on
    entry and again just before the swap). On success the new folder (with its marker) replaces
    the old one in one atomic exchange where the OS has it (Linux renameat2), else by two renames;
    on an error the temporary folder is removed and `path` is left as it was. Missing parent
    folders are created.

    Raises:
        PathInUseError: `path` holds something else.
    """

    def __init__(self, path: str | Path, kind: str = "model"):
        self.path = Path(path)
        self.kind = kind
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        check_replaceable(self.path, kind=self.kind)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir()
        mark(self.tmp, self.kind)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        try:
            check_replaceable(self.path, kind=self.kind)  # something may have appeared there meanwhile
        except PathInUseError:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        if self.path.exists() and _exchange(self.tmp, self.path):
            # one atomic swap: the path always names a complete folder; tmp now holds the old one
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = None
        if self.path.exists():
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.path, old)
        os.replace(self.tmp, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return False


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), rename_exchange) == 0


def remove_xmc_folder(path: str | os.PathLike, kind: str | None = None) -> None:
    """Delete the folder `path` if xmc wrote it (a folder of `kind`, when given); nothing when it
    does not exist.

    Raises:
        PathInUseError: `path` is not such a folder (it is left alone).
    """
    path = Path(path)
    if not os.path.lexists(path):
        return
    check_replaceable(path, kind=kind)
    shutil.rmtree(path)


def folder_bytes(path: str | os.PathLike) -> int:
    """Size on disk of the files below `path` (bytes; a model folder, an encoder)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
