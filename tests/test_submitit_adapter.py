"""submitit's private API, as launcher/submitit_adapter.py uses it. If a submitit release changes it,
these fail naming the method; fix the adapter (only it) and widen the pin in setup.cfg."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import submitit

from launcher import submit, submitit_adapter
from core.config import SlurmConfig
from launcher.render import render_sbatch
from launcher.submitit_adapter import PRIVATE_API, SbatchRefused, SubmititChanged, submit_script


@pytest.mark.parametrize("name", sorted(PRIVATE_API))
def test_each_private_method_the_adapter_uses_exists_with_the_expected_parameters(name):
    problems = [p for p in submitit_adapter.private_api_problems() if f".{name} " in p]
    assert not problems, (f"submitit {submitit.__version__}: {problems[0]}; launcher/submitit_adapter.py "
                          f"relies on SlurmExecutor.{name}{PRIVATE_API[name]}")


def test_submit_command_still_writes_the_batch_file_through_the_hook_we_override():
    # Otherwise our override is silently skipped and sbatch runs submitit's own pickling script.
    import inspect

    source = inspect.getsource(submitit.SlurmExecutor._submit_command)
    assert "self._make_submission_file_text(" in source, (
        f"submitit {submitit.__version__}: SlurmExecutor._submit_command no longer calls "
        "_make_submission_file_text; launcher/submitit_adapter.py can no longer submit our script")


def test_a_changed_api_is_reported_naming_the_method_and_the_supported_range(monkeypatch):
    class Renamed:
        def _submit_command(self, command, extra):
            pass

    problems = submitit_adapter.private_api_problems(Renamed)
    assert problems == ["Renamed._make_submission_file_text is missing",
                        "Renamed._submit_command takes (command, extra), expected (command)"]
    monkeypatch.setattr(submitit, "SlurmExecutor", Renamed)
    with pytest.raises(SubmititChanged, match=r"_submit_command takes .*install submitit>=1\.5\.4,<1\.6"):
        submit_script("#!/bin/bash\n", Path("unused"))


def test_a_changed_api_reaches_the_user_as_one_line_and_leaves_no_run_dir(monkeypatch, tmp_path):
    monkeypatch.setattr(submitit, "SlurmExecutor", type("Renamed", (), {}))
    run_dir = tmp_path / "run"
    with pytest.raises(submit.SubmitError, match=r"^could not submit with sbatch: submitit .* changed"):
        submit.submit_slurm("#!/bin/bash\n", run_dir, "1 node", fresh=True)
    assert not run_dir.exists()


def _scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.mark.slurm
def test_a_rendered_script_is_submitted_exactly_as_rendered(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run dir 'quoted'"
    # Queued but never run, on an idle cluster too: its begin time is a day away (sbatch 22.05
    # reads no SBATCH_HOLD from the environment, so that job would start at once).
    slurm = SlurmConfig(job_name="adapter-test", time_min=5, signal_lead_s=0, cpus_per_task=1,
                        extra=["--begin=now+1day"])
    script = render_sbatch(slurm, "mirrored", run_dir, sys.executable, worker_timeout_s=10)
    assert "#SBATCH --begin=now+1day\n" in script
    job_id = submit_script(script, tmp_path / "submitit")
    try:
        assert job_id.isdigit(), job_id
        assert re.search(r"JobState=PENDING Reason=BeginTime", _scontrol("show", "job", "-o", job_id))
        assert _scontrol("write", "batch_script", job_id, "-") == script
        # submitit's JobPaths bookkeeping, which `launch runs` reads: FOLDER/<id>_submission.sh.
        assert (tmp_path / "submitit" / f"{job_id}_submission.sh").read_text() == script
    finally:
        subprocess.run(["scancel", job_id], timeout=30)


@pytest.mark.slurm
def test_sbatch_refusing_the_script_is_reported_with_its_own_words(slurm_cluster, tmp_path):
    script = "#!/bin/bash\n#SBATCH --gres=gpu:v100:1\ntrue\n"
    with pytest.raises(SbatchRefused, match="Requested node configuration is not available"):
        submit_script(script, tmp_path / "submitit")
