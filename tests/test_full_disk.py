"""A write that fails for want of space is one line and leaves nothing half made, on a real full
file system (a 64 KiB tmpfs filled up; the tests run as root, as CI does)."""
from __future__ import annotations

import subprocess

import pytest


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (the suite runs as root): {done.stderr}"
    try:
        with open(mount / "filler", "wb", buffering=0) as fh, pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 4096)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_emit_sbatch_to_a_full_disk_is_one_line_and_leaves_no_run_directory(full_disk, run_root, launch_cli):
    target = full_disk / "job.sbatch"
    done = launch_cli("--run-root", run_root, "--emit-sbatch", target)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (f"launch: error: cannot write --emit-sbatch {target}: No space left on "
                                   "device; free space there or pass another file")
    assert "Traceback" not in done.stderr and not target.exists()
    assert not run_root.exists() or list(run_root.iterdir()) == []  # no config.yaml, job.sbatch or logs/ left
