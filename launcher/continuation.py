"""Continuing a run where SLURM refuses to requeue it (`JobRequeue=0`, `sbatch --no-requeue`).

The chief, stopped by the time-limit warning with a checkpoint saved, first asks for
`scontrol requeue`. When SLURM refuses, it submits a continuation instead: the run's own script,
rendered again from its config.yaml through the one render -> submit path, held until this job
has ended (`--dependency=afterany:JOB`), so the next job takes the writer lock only once this
one has let go. Continuations count against slurm.max_requeues together with requeues; the count
is kept in status.json (`continuations`), since a new job starts SLURM's restart count at 0.

TF-free: the trainer runs it as `python -m launcher.continuation --run-dir RUN --after JOB` once
training has stopped; it prints the new job's id.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core import rundir
from core.config import ConfigError, load_run_config
from launcher import container
from launcher.render import describe_request, render_sbatch
from launcher.submit import SubmitError, submit_slurm


def continuation_script(run_dir: Path, after_job: str) -> tuple[str, str]:
    """(script, request in sbatch's words) for the job that continues `run_dir` after `after_job`."""
    cfg = load_run_config(run_dir)
    script = render_sbatch(cfg.slurm, cfg.runtime.backend, Path(run_dir), cfg.runtime.python,
                           cfg.runtime.worker_timeout_s, container=container.for_run(cfg, Path(run_dir)))
    first, _, rest = script.partition("\n")
    return f"{first}\n#SBATCH --dependency=afterany:{after_job}\n{rest}", describe_request(cfg.slurm,
                                                                                              cfg.runtime.backend)


def submit_continuation(run_dir: Path, after_job: str) -> str:
    """Submits the continuation of `run_dir`; returns its job id, recorded in jobs.txt.

    Raises:
        SubmitError: sbatch refused or could not be run (one line).
    """
    try:
        script, asked = continuation_script(Path(run_dir), after_job)
    except (OSError, ValueError, ConfigError) as err:
        raise SubmitError(f"cannot render the continuation from {run_dir / rundir.CONFIG}: {err}") from None
    job_id = submit_slurm(script, Path(run_dir), asked, fresh=False)
    rundir.record_job(Path(run_dir), job_id)
    return job_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.continuation", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="the run to continue")
    parser.add_argument("--after", required=True, metavar="JOB", help="the job the continuation waits for")
    args = parser.parse_args(argv)
    try:
        print(submit_continuation(args.run_dir, args.after), flush=True)
    except SubmitError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
