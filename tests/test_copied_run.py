"""A run resumed from its mirror (`launch --resume s3://...`) may continue on another cluster,
where the job ids its files name belong to other people's jobs."""
from __future__ import annotations

import subprocess

import pytest

from core import rundir, runstatus
from s3_server import s3, s3_endpoint  # noqa: F401 (fixtures)

pytestmark = pytest.mark.slurm


def test_a_copied_run_forgets_the_job_ids_of_where_it_ran(s3, slurm_cluster, launch_cli, tmp_path):
    from training.mirror import Mirror

    # A job of this cluster that is not the run's; the copied files name its id.
    other = subprocess.run(["sbatch", "--parsable", f"--output={tmp_path}/other-%j.out", "--wrap", "sleep 600"],
                           capture_output=True, text=True, check=True).stdout.strip()
    try:
        done = launch_cli("--run-root", tmp_path / "there", "--emit-sbatch", tmp_path / "there.sbatch")
        assert done.returncode == 0, done.stderr
        (run_dir,) = (tmp_path / "there").iterdir()
        rundir.record_job(run_dir, other)
        (run_dir / "logs" / f"slurm-{other}.out").write_text("trained on the other cluster\n")
        runstatus.write_status(run_dir, state="running", job_id=other)
        mirror = Mirror(run_dir, f"{s3}/runs", log=lambda line: None)
        assert mirror.sync() == []  # the mirror as the run left it mid-epoch

        done = launch_cli("--resume", mirror.url, "--run-root", tmp_path / "here",
                          "--emit-sbatch", tmp_path / "here.sbatch")
        assert done.returncode == 0, done.stderr  # not "still has job N in the queue"
        copied = tmp_path / "here" / run_dir.name
        assert rundir.job_ids(copied) == []
        kept = copied / "logs" / rundir.COPIED_LOGS
        assert (kept / f"slurm-{other}.out").read_text() == "trained on the other cluster\n"
        assert (kept / rundir.JOBS).read_text() == f"{other}\n"
        state = runstatus.read_status(copied)
        assert state["state"] == "stopped" and state["job_id"] is None, state

        listed = launch_cli("runs", "--run-root", tmp_path / "here")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines()[1].split()[2] == "STOPPED", listed.stdout
    finally:
        subprocess.run(["scancel", other], check=False)
