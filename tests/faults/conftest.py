"""Fixtures of the fault tests: a tmpfs mounted for the run directory (another filesystem than
``$TMPDIR``, as NFS/Lustre run directories are on clusters; optionally size-limited to fill the
disk). Needs root and a working ``mount``; otherwise the test is skipped with the reason."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs(size)`` mounts a fresh tmpfs of ``size`` (e.g. "64m") and returns its path;
    everything is unmounted at teardown."""
    mounted: list[Path] = []

    def mount(size: str = "64m") -> Path:
        if os.name != "posix" or os.geteuid() != 0:
            _skip("not root: cannot mount a tmpfs for the run directory")
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            _skip(f"mount -t tmpfs failed: {out.stderr.strip() or out.returncode}")
        mounted.append(point)
        assert point.stat().st_dev != Path(os.environ.get("TMPDIR", "/tmp")).stat().st_dev
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _skip(reason: str) -> None:
    print(f"SKIPPED: {reason}", file=sys.stderr)
    pytest.skip(reason)
