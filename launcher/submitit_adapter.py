"""The one place that uses submitit's private API: sbatch a script we rendered ourselves.

submitit's public API submits pickled Python callables with a batch file it writes. We want its
sbatch call, job-id parsing and JobPaths bookkeeping, but with our own rendered script as the batch
file, which only its private methods allow. setup.cfg pins the range this was checked against
(submitit>=1.5.4,<1.6); tests/test_submitit_adapter.py fails, naming the method, when they change.

submitit is imported inside the functions: `launch --dry-run` never pays for it.
"""
from __future__ import annotations

import contextlib
import inspect
import io
from pathlib import Path

# SlurmExecutor method -> the parameter names (after self) this module relies on.
PRIVATE_API = {
    # The hook _submit_command calls for the batch file's text; overridden to return our script.
    "_make_submission_file_text": ("command", "uid"),
    # Writes the batch file, runs sbatch, parses the job id; returns a Job.
    "_submit_command": ("command",),
}
SUPPORTED = "submitit>=1.5.4,<1.6"


class SbatchRefused(Exception):
    """sbatch ran and refused the job; the message is what it printed."""


class SubmititChanged(RuntimeError):
    """The installed submitit lacks a private method this module relies on."""


def private_api_problems(executor_class: type | None = None) -> list[str]:
    """What differs from PRIVATE_API in `executor_class` (default submitit's SlurmExecutor).

    Returns:
        One line per missing or re-shaped method, naming it; empty when all is as expected.
    """
    if executor_class is None:
        import submitit  # noqa: PLC0415 (deferred: only submission needs it)

        executor_class = submitit.SlurmExecutor
    problems = []
    for name, expected in PRIVATE_API.items():
        method = getattr(executor_class, name, None)
        if not callable(method):
            problems.append(f"{executor_class.__name__}.{name} is missing")
            continue
        found = tuple(inspect.signature(method).parameters)[1:]  # without self
        if found != expected:
            problems.append(f"{executor_class.__name__}.{name} takes ({', '.join(found)}), "
                            f"expected ({', '.join(expected)})")
    return problems


def check_private_api() -> None:
    """Raises SubmititChanged, naming the method and the supported range, if the API moved."""
    import submitit  # noqa: PLC0415

    if problems := private_api_problems():
        raise SubmititChanged(f"submitit {submitit.__version__} changed its private API "
                              f"({'; '.join(problems)}); install {SUPPORTED}")


def submit_script(script: str, folder: Path) -> str:
    """Submits `script` as it is with sbatch and returns the job id.

    Args:
        script: the complete batch script, #SBATCH lines included.
        folder: where submitit keeps its copy of the script (FOLDER/<job id>_submission.sh);
            made if missing.

    Raises:
        SbatchRefused: sbatch exited with an error.
        SubmititChanged: the installed submitit is outside the supported range.
        RuntimeError, OSError: sbatch could not be run or its answer not read.
    """
    import submitit  # noqa: PLC0415
    from submitit.core.utils import FailedJobError  # noqa: PLC0415

    check_private_api()
    Path(folder).mkdir(parents=True, exist_ok=True)

    class RenderedScriptExecutor(submitit.SlurmExecutor):
        def _make_submission_file_text(self, command: str, uid: str) -> str:
            return script

    executor = RenderedScriptExecutor(folder=folder)
    try:
        # submitit prints sbatch's stderr itself on failure; the caller reports it instead.
        with contextlib.redirect_stderr(io.StringIO()):
            job = executor._submit_command("unused: the batch file is the script above")
    except FailedJobError as err:
        raise SbatchRefused(str(err)) from None
    return str(job.job_id)
