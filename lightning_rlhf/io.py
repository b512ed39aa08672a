"""Files a run writes and reads back: atomic writes on any filesystem, checkpoints that fail in
one line, and the clean-up of what an interrupted write left behind.

Every write goes to a temporary name in the destination's own directory (never ``$TMPDIR``,
which on clusters is another filesystem, where a rename turns into copy-and-truncate), is
flushed and fsynced, then renamed over the destination with ``os.replace`` and the directory is
fsynced: the previous good file stays readable until the new one is complete. Directories (the
Hugging Face export, FSDP2 distributed checkpoints) are written into a temporary sibling and
swapped in with two renames; a crash between them leaves the old one under an ``OLD_PREFIX``
name, which :func:`clean_leftovers` puts back at the next start.

:class:`AtomicCheckpointIO` is the Lightning ``CheckpointIO`` plug-in that uses these for
single-file checkpoints (the CLI installs it by default).
"""

from __future__ import annotations

import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol

#: name prefix of a write in progress (removed at the next start when left behind)
TMP_PREFIX = ".lrlhf-tmp-"
#: name prefix of a directory being replaced (put back at the next start when left behind)
OLD_PREFIX = ".lrlhf-old-"
#: file inside an FSDP2 (``ModelParallelStrategy``) distributed checkpoint folder holding the
#: non-tensor state (loops, hyperparameters)
DISTRIBUTED_META = "meta.pt"
#: keys every Lightning checkpoint has (a resume needs the training ones too)
REQUIRED_KEYS = ("state_dict",)
RESUME_KEYS = ("global_step", "loops", "optimizer_states")


class CheckpointError(OSError):
    """A checkpoint cannot be written or read; the message is one line naming the file."""


# --------------------------------------------------------------------------- atomic writes


def _temp_name(path: Path, prefix: str = TMP_PREFIX) -> Path:
    """A fresh hidden sibling of ``path`` (same directory, hence same filesystem)."""
    return path.with_name(f"{prefix}{path.name}.{os.getpid()}.{secrets.token_hex(4)}")


def fsync_dir(directory: str | Path) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it is flushed, fsynced
    and renamed over ``path``; on an error it is removed and ``path`` is left as it was.

    Example: ``with atomic_write(run / "eval.json", "w") as f: json.dump(result, f)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`; a failed write (disk full, ...)
    raises :class:`CheckpointError` naming ``path`` and leaves the previous file intact."""
    try:
        with atomic_write(path) as handle:
            torch.save(obj, handle)
    except (OSError, RuntimeError) as err:
        raise CheckpointError(
            f"could not write {path}: {_first_line(err)} (the previous file, if any, is intact)"
        ) from err


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (before it is renamed into place)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with suppress(OSError):
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(dirpath)


def temp_directory(path: str | Path) -> Path:
    """A fresh, empty temporary sibling directory of ``path`` to write a new version into."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    tmp.mkdir()
    return tmp


def commit_directory(tmp: str | Path, path: str | Path) -> None:
    """Swap the finished directory ``tmp`` in as ``path`` (a file or folder there is replaced):
    fsync its contents, move the old version aside, rename, drop the old version."""
    tmp, path = Path(tmp), Path(path)
    _fsync_tree(tmp)
    old = None
    if path.exists() or path.is_symlink():
        old = _temp_name(path, OLD_PREFIX)
        os.rename(path, old)
    os.rename(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        _remove(old)


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on a clean exit it replaces ``path``
    (:func:`commit_directory`), on an error it is removed and ``path`` is untouched."""
    tmp = temp_directory(path)
    try:
        yield tmp
        commit_directory(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    """Remove a file or a directory tree (missing is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def clean_leftovers(directory: str | Path) -> list[str]:
    """Remove the temporary files/folders an interrupted write left in ``directory``, and put
    back a folder that was moved aside but never replaced. Run by one process at start-up,
    before anything is written there.

    Returns:
        the names removed or restored (for a log line).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    done = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(OLD_PREFIX):
            original = directory / entry.name[len(OLD_PREFIX) :].rsplit(".", 2)[0]
            if not original.exists():
                os.rename(entry, original)
                done.append(f"{entry.name} -> {original.name}")
                continue
        elif not entry.name.startswith(TMP_PREFIX):
            continue
        _remove(entry)
        done.append(entry.name)
    return done


# --------------------------------------------------------------------------- reading back


def _first_line(err: BaseException) -> str:
    """``Type: first sentence of the message``."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else ""
    first = first if len(first) <= 160 else first.split(". ")[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def read_checkpoint(
    path: str | Path,
    map_location: Any = "cpu",
    weights_only: bool | None = None,
    mmap: bool = False,
    required: tuple[str, ...] = REQUIRED_KEYS,
) -> dict[str, Any]:
    """Load a Lightning checkpoint (a file, or an FSDP2 folder's ``meta.pt``) or raise
    :class:`CheckpointError` with one line naming it and what is wrong (empty, truncated, not a
    checkpoint, a directory, missing keys)."""
    path = Path(path)
    if path.is_dir():
        meta = path / DISTRIBUTED_META
        if not meta.is_file():
            raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file")
        return read_checkpoint(meta, map_location, weights_only, mmap, required=())
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): an interrupted write?")
    with open(path, "rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            raise CheckpointError(
                f"checkpoint {path} is not a PyTorch checkpoint (no zip header): another kind of "
                "file, or damaged"
            )
    try:
        checkpoint = torch.load(
            path, map_location=map_location, weights_only=weights_only, mmap=mmap
        )
    except Exception as err:  # every way torch.load fails on a damaged file
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated or not a checkpoint): {_first_line(err)}"
        ) from err
    if not isinstance(checkpoint, dict):
        raise CheckpointError(
            f"checkpoint {path} holds a {type(checkpoint).__name__}, not a Lightning checkpoint"
        )
    missing = [key for key in required if key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is not a Lightning training checkpoint: missing {missing}"
        )
    return checkpoint


def resolve_checkpoint(
    path: str | Path,
    warn: Callable[[str], None] | None = None,
    required: tuple[str, ...] = REQUIRED_KEYS + RESUME_KEYS,
) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to resume from and its (lazily mapped) contents: ``path`` itself, or, when
    ``path`` is a ``last*.ckpt`` that cannot be read, the newest loadable ``*.ckpt`` beside it
    (``warn`` is told which). Anything else unreadable raises :class:`CheckpointError`."""
    path = Path(path)
    try:
        return path, read_checkpoint(path, mmap=not path.is_dir(), required=required)
    except CheckpointError as err:
        if not path.name.startswith("last"):
            raise
        for candidate in _newest_first(path):
            try:
                checkpoint = read_checkpoint(candidate, mmap=True, required=required)
            except CheckpointError:
                continue
            message = f"{err}; resuming from {candidate.name}, the newest loadable checkpoint"
            (warn or (lambda m: warnings.warn(m, stacklevel=3)))(message)
            return candidate, checkpoint
        raise CheckpointError(f"{err}; no other loadable checkpoint in {path.parent}") from None


def _newest_first(path: Path) -> list[Path]:
    """The other ``*.ckpt`` files beside ``path``, newest first."""
    others = [p for p in path.parent.glob("*.ckpt") if p != path and not p.name.startswith(".")]
    return sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's ``TorchCheckpointIO`` with local checkpoints written by :func:`atomic_save`
    (same-directory temp file, fsync, rename, directory fsync) and read by
    :func:`read_checkpoint` (one-line errors; an unreadable ``last*.ckpt`` falls back to the
    newest loadable checkpoint beside it, with a warning). Remote (fsspec) paths keep
    Lightning's own behaviour."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not _is_local_file_protocol(path):
            return super().load_checkpoint(path, map_location=map_location)
        chosen, _ = resolve_checkpoint(path, required=REQUIRED_KEYS)
        location = map_location if map_location is not None else "cpu"
        return read_checkpoint(chosen, map_location=location, weights_only=weights_only)
