"""``lightning_rlhf.io`` under faults: a write that dies midway leaves the previous file and no
temporary; leftovers are cleaned at the next start; every kind of damaged checkpoint is answered
in one line naming it; an unreadable ``last.ckpt`` falls back to the newest loadable one."""

from __future__ import annotations

import io as pyio
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from lightning_rlhf.io import (
    OLD_PREFIX,
    TMP_PREFIX,
    AtomicCheckpointIO,
    CheckpointError,
    atomic_directory,
    atomic_save,
    atomic_write,
    clean_leftovers,
    read_checkpoint,
    resolve_checkpoint,
)

GOOD = {"state_dict": {"w": torch.ones(3)}, "global_step": 3, "loops": {}, "optimizer_states": []}


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("crash while serialising")


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_save(GOOD, path)
    with pytest.raises(CheckpointError, match="last.ckpt.*previous file"):
        atomic_save({"state_dict": {}, "bad": _Unpicklable()}, path)
    with pytest.raises(ZeroDivisionError), atomic_write(path) as handle:
        handle.write(b"half a checkpoint")
        raise ZeroDivisionError
    assert torch.load(path, weights_only=True)["global_step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_the_temporary_lives_beside_the_destination(tmp_path, monkeypatch):
    """Never in $TMPDIR (another filesystem on clusters, where rename becomes copy)."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    with atomic_write(tmp_path / "run" / "x.bin") as handle:
        handle.write(b"x")
        seen = [p.name for p in (tmp_path / "run").iterdir()]
    assert len(seen) == 1 and seen[0].startswith(TMP_PREFIX + "x.bin."), seen
    assert (tmp_path / "run" / "x.bin").read_bytes() == b"x"


def test_checkpoint_io_writes_atomically_and_keeps_permissions(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint(GOOD, path)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert io.load_checkpoint(path)["global_step"] == 3


def test_directories_are_swapped_whole(tmp_path):
    target = tmp_path / "export"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(KeyError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("v2 half")
        raise KeyError("crash mid-export")
    assert (target / "a.txt").read_text() == "v1"
    with atomic_directory(target) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_leftovers_are_removed_and_a_moved_aside_folder_restored(tmp_path):
    (tmp_path / f"{TMP_PREFIX}last.ckpt.123.abcd").write_bytes(b"partial")
    (tmp_path / f"{TMP_PREFIX}export.123.abcd").mkdir()
    (tmp_path / f"{OLD_PREFIX}export.123.beef").mkdir()  # killed between the two renames
    (tmp_path / f"{OLD_PREFIX}export.123.beef" / "model.safetensors").write_bytes(b"old")
    (tmp_path / "keep.ckpt").write_bytes(b"k")
    done = clean_leftovers(tmp_path)
    assert len(done) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "keep.ckpt"]
    assert (tmp_path / "export" / "model.safetensors").read_bytes() == b"old"


def _zip_without_state_dict(path: Path) -> None:
    torch.save({"global_step": 1, "loops": {}, "optimizer_states": []}, path)


def _truncated(path: Path) -> None:
    torch.save(GOOD, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random(path: Path) -> None:
    path.write_bytes(bytes((i * 97 + 13) % 256 for i in range(4096)))


def _foreign_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "not torch")


def _pickle_list(path: Path) -> None:
    buffer = pyio.BytesIO()
    torch.save([1, 2, 3], buffer)
    path.write_bytes(buffer.getvalue())


DAMAGE = {
    "empty": (lambda p: p.write_bytes(b""), "empty"),
    "truncated": (_truncated, "cannot be read"),
    "random bytes": (_random, "not a PyTorch checkpoint"),
    "text file": (lambda p: p.write_text(json.dumps({"state_dict": 1})), "not a PyTorch"),
    "zip of something else": (_foreign_zip, "cannot be read"),
    "a list, not a dict": (_pickle_list, "holds a list"),
    "missing state_dict": (_zip_without_state_dict, r"missing \['state_dict'\]"),
    "directory": (lambda p: p.mkdir(), "is a directory"),
    "missing file": (lambda p: None, "does not exist"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_every_damaged_checkpoint_is_one_line_naming_it(tmp_path, kind):
    make, message = DAMAGE[kind]
    path = tmp_path / "epoch=0-step=3.ckpt"
    make(path)
    with pytest.raises(CheckpointError, match=message) as err:
        read_checkpoint(path)
    text = str(err.value)
    assert str(path) in text and "\n" not in text, text
    with pytest.raises(CheckpointError):  # no sibling to fall back to: not a last*.ckpt
        resolve_checkpoint(path)


def test_an_unreadable_last_falls_back_to_the_newest_loadable(tmp_path):
    older, newer = tmp_path / "epoch=0-step=2.ckpt", tmp_path / "epoch=0-step=4.ckpt"
    torch.save({**GOOD, "global_step": 2}, older)
    torch.save({**GOOD, "global_step": 4}, newer)
    os.utime(older, (1, 1))
    (tmp_path / "epoch=0-step=5.ckpt").write_bytes(b"")  # newest, but empty: skipped
    last = tmp_path / "last.ckpt"
    last.write_bytes(b"")
    warnings = []
    path, checkpoint = resolve_checkpoint(last, warn=warnings.append)
    assert path == newer and checkpoint["global_step"] == 4
    assert len(warnings) == 1 and "last.ckpt" in warnings[0] and newer.name in warnings[0]
    assert AtomicCheckpointIO().load_checkpoint(last)["global_step"] == 4
    newer.unlink(), older.unlink()
    with pytest.raises(CheckpointError, match="no other loadable checkpoint"):
        resolve_checkpoint(last)
