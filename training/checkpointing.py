"""Crash-safe training checkpoints: write to a hidden temporary folder, then rename it into place.

Layout under ``<output_dir>/checkpoints/``::

    checkpoint-00000500/        one complete checkpoint (renamed into place only once fully written)
        trainer_state.json      written last; its presence (and ``"format"``) marks a complete checkpoint
        ...                     model / optimizer / RNG / EMA files
    latest                      text file naming the newest checkpoint folder (replaced atomically)
    .tmp-checkpoint-00000500/   a checkpoint being written (removed at the next save or start)

A process killed at any moment leaves either no new ``checkpoint-*`` folder or a complete one, and ``latest``
names a complete checkpoint or does not exist: ``rename`` within one file system is atomic on POSIX and Windows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

__all__ = [
    "CHECKPOINT_FORMAT",
    "STATE_FILE",
    "LATEST_FILE",
    "checkpoint_name",
    "is_checkpoint",
    "read_trainer_state",
    "list_checkpoints",
    "resolve_checkpoint",
    "staging_dir",
    "commit_checkpoint",
    "write_text_atomic",
    "fsync_tree",
    "prune_checkpoints",
    "clean_staging",
]

CHECKPOINT_FORMAT = "sde-diffusers-training-checkpoint"
STATE_FILE = "trainer_state.json"
LATEST_FILE = "latest"
_NAME_RE = re.compile(r"^checkpoint-(\d+)$")
_STAGING_PREFIX = ".tmp-"
_TRASH_PREFIX = ".old-"


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint after ``step`` optimizer steps (zero-padded, so names sort by step)."""
    return f"checkpoint-{step:08d}"


def read_trainer_state(path: str | os.PathLike) -> dict:
    """The ``trainer_state.json`` of a checkpoint folder.

    Raises:
        `ValueError`: ``path`` is not a folder holding a complete checkpoint written by this trainer.
    """
    path = Path(path)
    state_file = path / STATE_FILE
    if not path.is_dir():
        raise ValueError(f"{str(path)!r} is not a checkpoint: no such folder")
    if not state_file.is_file():
        raise ValueError(f"{str(path)!r} is not a checkpoint of this trainer: it has no {STATE_FILE}")
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} is not a readable checkpoint: {STATE_FILE} does not parse ({err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{str(path)!r} is not a checkpoint of this trainer ({STATE_FILE} has another format)")
    missing = [f for f in state.get("files", []) if not (path / f).exists()]
    if missing:
        raise ValueError(f"checkpoint {str(path)!r} is incomplete: missing {missing}")
    return state


def is_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a complete checkpoint."""
    try:
        read_trainer_state(path)
    except ValueError:
        return False
    return True


def list_checkpoints(checkpoints_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``checkpoints_dir``, oldest first (by step)."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _NAME_RE.match(child.name)
        if match and is_checkpoint(child):
            found.append((int(match.group(1)), child))
    return [p for _, p in sorted(found)]


def resolve_checkpoint(spec: str | os.PathLike, checkpoints_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder ``spec`` names.

    Args:
        spec: ``"latest"`` (the folder ``checkpoints_dir/latest`` names, else the newest complete checkpoint,
            else ``None``), or a path to a checkpoint folder (a bare folder name is looked up in
            ``checkpoints_dir`` too).
        checkpoints_dir: where this run keeps its checkpoints.

    Returns:
        `Path` or `None` (only for ``"latest"`` when no checkpoint exists yet).

    Raises:
        `ValueError`: ``spec`` is a path that is not a complete checkpoint.
    """
    root = Path(checkpoints_dir)
    if str(spec) == "latest":
        pointer = root / LATEST_FILE
        if pointer.is_file():
            candidate = root / pointer.read_text(encoding="utf-8").strip()
            if _NAME_RE.match(candidate.name) and is_checkpoint(candidate):
                return candidate
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(spec)
    if not path.exists() and not path.is_absolute() and (root / path).exists():
        path = root / path
    read_trainer_state(path)  # raises with the reason
    return path


def staging_dir(checkpoints_dir: str | os.PathLike, step: int) -> Path:
    """The hidden folder a checkpoint is written to before :func:`commit_checkpoint` renames it."""
    return Path(checkpoints_dir) / f"{_STAGING_PREFIX}{checkpoint_name(step)}"


def fsync_tree(path: str | os.PathLike) -> None:
    """Flush every file below ``path`` and the folders themselves to disk (best effort where unsupported)."""
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(root)


def _fsync_dir(path: str | os.PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f"{_STAGING_PREFIX}{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def commit_checkpoint(staging: str | os.PathLike, checkpoints_dir: str | os.PathLike, step: int) -> Path:
    """Rename a fully written staging folder to ``checkpoint-<step>`` and point ``latest`` at it.

    An existing checkpoint of the same step (a run resumed from an older checkpoint reaches it again) is moved
    aside first and deleted after the new one is in place.

    Returns:
        `Path`: the committed checkpoint folder.
    """
    root = Path(checkpoints_dir)
    staging = Path(staging)
    read_trainer_state(staging)  # never commit an incomplete folder
    fsync_tree(staging)
    final = root / checkpoint_name(step)
    trash = None
    if final.exists():
        trash = root / f"{_TRASH_PREFIX}{final.name}.{os.getpid()}"
        os.replace(final, trash)
    os.replace(staging, final)
    _fsync_dir(root)
    write_text_atomic(root / LATEST_FILE, final.name + "\n")
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return final


def prune_checkpoints(checkpoints_dir: str | os.PathLike, keep: int | None) -> list[Path]:
    """Delete the oldest complete checkpoints so that at most ``keep`` remain (never the one ``latest`` names).

    Returns:
        `list[Path]`: the deleted folders.
    """
    if keep is None:
        return []
    root = Path(checkpoints_dir)
    latest = resolve_checkpoint("latest", root)
    found = [p for p in list_checkpoints(root) if p != latest]
    excess = len(found) + (latest is not None) - keep
    removed = []
    for path in found[: max(excess, 0)]:
        # Rename first so a crash mid-delete never leaves a half-deleted folder that looks like a checkpoint.
        trash = root / f"{_TRASH_PREFIX}{path.name}.{os.getpid()}"
        os.replace(path, trash)
        shutil.rmtree(trash, ignore_errors=True)
        removed.append(path)
    return removed


def clean_staging(checkpoints_dir: str | os.PathLike) -> None:
    """Remove staging and trash folders left behind by a killed run."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.name.startswith((_STAGING_PREFIX, _TRASH_PREFIX)):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
