"""Site escape hatches: slurm.extra (raw sbatch options) and slurm.exports (variables passed on)."""
from __future__ import annotations

import re
import subprocess

import pytest

from core.config import ConfigError, SlurmConfig
from launcher.render import render_sbatch
from test_render import PYTHON, RUN_DIR, check_golden, sbatch_lines

HOSTILE = ["--comment=$(touch /tmp/launch-extra-x) `touch /tmp/launch-extra-y`; echo 'q'", "--reservation=ml",
           "--mail-type=END", "--no-kill"]


def hostile(**more) -> SlurmConfig:
    return SlurmConfig(job_name="site", time_min=30, extra=HOSTILE, exports=["WANDB_API_KEY", "HF_HOME"], **more)


def test_extra_options_are_one_quoted_directive_each_and_exports_only_names():
    text = render_sbatch(hostile(), "mirrored", RUN_DIR, PYTHON, 60)
    check_golden("site/extra-and-exports.sbatch", text)
    lines = sbatch_lines(text)
    assert "--comment='$(touch /tmp/launch-extra-x) `touch /tmp/launch-extra-y`; echo '\"'\"'q'\"'\"''" in lines
    assert {"--reservation=ml", "--mail-type=END", "--no-kill", "--export=ALL,HF_HOME,WANDB_API_KEY"} <= set(lines)
    assert lines == sorted(lines)


@pytest.mark.parametrize("extra, exports, message", [
    (["reservation=ml"], [], "slurm.extra 'reservation=ml': each item is one sbatch option written --key"),
    (["--nodes=4"], [], "slurm.extra --nodes: launch sets --nodes itself"),
    (["--comment=a\nb"], [], "control character"),
    ([], ["TOKEN=secret"], "slurm.exports 'TOKEN=secret': give environment variable names only"),
])
def test_bad_site_options_are_refused(extra, exports, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        render_sbatch(SlurmConfig(job_name="j", time_min=30, extra=extra, exports=exports), "mirrored", RUN_DIR,
                      PYTHON, 60)


def test_an_option_without_dashes_is_one_line_from_launch(launch_cli, run_root):
    done = launch_cli("--config", "configs/demo.yaml", "--run-root", run_root, "--dry-run",
                      "slurm.extra=[reservation=ml]")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "slurm.extra 'reservation=ml'" in done.stderr and not run_root.exists()


@pytest.mark.slurm
def test_sbatch_reads_the_hostile_option_as_text_and_runs_nothing(slurm_cluster, tmp_path):
    marks = [tmp_path / "x", tmp_path / "y"]
    value = f"$(touch {marks[0]}) `touch {marks[1]}`"
    slurm = SlurmConfig(job_name="site", time_min=30, cpus_per_task=1, extra=[f"--comment={value}"])
    script = tmp_path / "job.sbatch"
    script.write_text(render_sbatch(slurm, "mirrored", tmp_path / "run", PYTHON, 60))
    done = subprocess.run(["sbatch", "--hold", "--parsable", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    try:
        shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
        assert f"Comment={value}" in shown, shown
    finally:
        subprocess.run(["scancel", job])
    assert not any(m.exists() for m in marks)
