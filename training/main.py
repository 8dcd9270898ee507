"""Compute-node entry point: `python -m training.main --run-dir RUN_DIR`.

Every task of the job step runs this. It reads the run's resolved config, starts the backend,
trains (resuming if the run directory holds a checkpoint), and on a stop request asks SLURM to
requeue the job so it continues in the same run directory.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

from core import rundir, slurm
from core.config import Config, ConfigError, load_run_config
from core.locks import writer_lock
from core.runstatus import completed_before_restart, read_status, write_status
from training import evaluate, provenance, signals
from training.backends import BackendError, create_backend
from training.cluster import cluster_from_env
from training.data import DataError, as_data_error
from training.data.stage import stage, stage_file
from training.envreport import write_env_report
from training.gpucheck import NoGPUError, check_start, hide_gpus
from training.mirror import mirrored
from training.report.summary import write_summary

EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped with a resumable checkpoint, to be resumed


def requeue(job_id: str | None, restarts: int, max_requeues: int, run_dir: Path | None = None) -> str:
    """Asks SLURM to requeue this job (an array task: that task alone, its id being ARRAY_TASK);
    where SLURM refuses (JobRequeue=0, --no-requeue), submits a continuation job for the run
    directory instead (launcher/continuation.py). Both count against max_requeues. Returns what
    happened, for the status file: "requeued ..." when the run comes back by itself."""
    if job_id is None:
        return "stopped (not a SLURM job: continue with launch --resume RUN_DIR)"
    continuations = int(read_status(run_dir).get("continuations", 0)) if run_dir else 0
    if restarts + continuations >= max_requeues:
        return f"stopped: requeue limit {max_requeues} reached; continue with launch --resume RUN_DIR"
    done = slurm.requeue(job_id)
    if not done.returncode:
        return f"requeued (restart {restarts + continuations + 1} of at most {max_requeues})"
    refused = done.stderr.strip()
    if run_dir is None:
        return f"stopped: scontrol requeue failed ({refused}); use launch --resume RUN_DIR"
    # The submission layer is the login side's: the trainer asks it through its command line (as
    # it asks SLURM through scontrol), with no import of launch's modules into the job.
    done = subprocess.run([sys.executable, "-m", "launcher.continuation", "--run-dir", str(run_dir),
                           "--after", job_id], capture_output=True, text=True)
    if done.returncode:
        err = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return f"stopped: scontrol requeue failed ({refused}) and so did a continuation job ({err}); " \
               "use launch --resume RUN_DIR"
    follower = done.stdout.strip()
    write_status(run_dir, continuations=continuations + 1)
    return (f"requeued as continuation job {follower}, which starts once job {job_id} ends (SLURM refused "
            f"scontrol requeue: {refused}; restart {restarts + continuations + 1} of at most {max_requeues})")


def final_report(cfg: Config, run_dir: Path, result: dict, backend) -> dict:
    """Chief only: the task's prediction report from the best checkpoint (the evaluation `launch
    eval` runs, training/evaluate.py), then the summary, which it returns."""
    checkpoint = "best" if rundir.RunDir(run_dir).best_checkpoint.is_file() else "final"
    model = evaluate.load_model(evaluate.checkpoint_path(run_dir, checkpoint))
    fields = result["task"].final_report(run_dir, model, result["plan"], checkpoint)
    return write_summary(run_dir, wall_time_s=round(result["wall_time_s"], 1), nodes=cfg.slurm.nodes,
                         gpus=cfg.slurm.nodes * cfg.slurm.gpus_per_node, backend=cfg.runtime.backend,
                         job_id=backend.spec.job_id, **fields)


def result_line(summary: dict, run_dir: Path) -> str:
    """The one line that ends a completed run's log: accuracy, the target, epochs, wall time and
    where the report is. The best figure is the best checkpoint's, evaluated on the whole
    validation split (summary "eval") when there is one."""
    def figure(value) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    best = (summary.get("eval") or {}).get("accuracy", summary.get("best_val_accuracy"))
    target = summary.get("target_accuracy")
    reached = ("no target set (train.target_accuracy)" if not target else
               f"target {target:g} {'reached' if summary.get('target_reached') else 'NOT reached'}")
    wall = summary.get("wall_time_s")
    return (f"[train] result: val accuracy best {figure(best)} (epoch {summary.get('best_epoch')}), final "
            f"{figure(summary.get('final_val_accuracy'))}; {reached}; {summary.get('epochs_done')} of "
            f"{summary.get('epochs_total')} epochs in {'n/a' if wall is None else f'{wall:.0f} s'}; "
            f"report {Path(run_dir) / rundir.REPORT / rundir.SUMMARY}")


def tensorflow_env(cfg: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """Variables to set before TensorFlow loads (pure): its C++ log level, 0 for runtime.verbose
    (training/keras_compat.py then keeps its start-up messages too), and no GPUs for a job that
    asked for none (training/gpucheck.py hide_gpus)."""
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"} if cfg.runtime.verbose else {}
    if hide_gpus(cfg.slurm.gpus_per_node, environ):
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def stage_inputs(cfg: Config) -> None:
    """s3:// inputs copied to node-local scratch once per node (training/data/stage.py); the
    config then names the local copies. config.yaml keeps the URLs."""
    if cfg.data.data_dir.startswith("s3://"):
        cfg.data.data_dir = str(stage(cfg.data.data_dir, cfg.storage,
                                      log=lambda line: print(f"[train] {line}", flush=True)))

    if (cfg.model.weights or "").startswith("s3://"):
        cfg.model.weights = str(stage_file(cfg.model.weights, cfg.storage))
    if cfg.text.embeddings_file.startswith("s3://"):
        cfg.text.embeddings_file = str(stage_file(cfg.text.embeddings_file, cfg.storage))


def run(run_dir: Path, is_chief: bool) -> int:
    signals.install()  # before TensorFlow loads: a stop signal during start-up must not kill the job
    cfg = load_run_config(run_dir)
    os.environ.update(tensorflow_env(cfg, os.environ))  # before TensorFlow loads
    if is_chief:  # it holds the run's writer lock (main)
        write_env_report(run_dir)

    check_start(cfg.runtime.allow_cpu)  # before the backend: never train on the CPU by accident
    stage_inputs(cfg)

    backend = create_backend(cfg.runtime)
    if backend.is_chief:
        provenance.record(cfg, run_dir, backend)
    else:  # only now: a rank whose chief was refused the run (a duplicate job) never gets here
        write_env_report(run_dir)
    with mirrored(cfg.storage, run_dir, backend.is_chief, log=lambda line: print(f"[train] {line}", flush=True)):
        code, summary = _train_and_report(cfg, run_dir, backend)
    if summary is not None:  # the chief of a completed run: its last line, after the mirror's
        print(result_line(summary, run_dir), flush=True)
    return code


def _this_start(backend) -> dict:
    """The job id and restart count an end state is stamped with, so that the batch script's
    settle tells this start's word from an earlier start's (core/runstatus.earlier_start)."""
    spec = backend.spec
    return {"job_id": spec.job_id, "restarts": spec.restart_count} if spec.job_id else {}


def _train_and_report(cfg: Config, run_dir: Path, backend) -> tuple[int, dict | None]:
    """Returns the exit code, and the summary when this process is the chief of a completed run."""
    from training.callbacks import write_status  # defers TensorFlow
    from training.loop import train  # defers TensorFlow

    try:
        result = train(cfg, run_dir, backend)
        if result["state"] == "stopped":
            if not backend.is_chief:
                return 0, None  # the chief decides what happens next and says so
            spec = backend.spec
            if result["signal"] == "SIGUSR1":  # SLURM's warning before the time limit
                message = requeue(spec.job_id, spec.restart_count,
                                  int(os.environ.get("LAUNCH_MAX_REQUEUES", cfg.slurm.max_requeues)), run_dir)
            else:  # preemption, scancel or an outside requeue: SLURM decides what comes next
                by = result["signal"] or "a stop signal to another worker"  # the vote tells that one came, not which
                message = f"stopped by {by}; checkpoint saved"
            requeued = message.startswith("requeued")
            write_status(run_dir, state="requeued" if requeued else "stopped", epoch=result["epoch"],
                         message=message, **_this_start(backend))
            print(f"[train] {message}", flush=True)
            # Unfinished and not coming back by itself: not a success in SLURM's eyes either.
            return (0 if requeued else EXIT_STOPPED), None
        if not backend.is_chief:
            return 0, None
        summary = final_report(cfg, run_dir, result, backend)
        write_status(run_dir, state="completed", epoch=result["epoch"], message="", **_this_start(backend))
        return 0, summary
    except Exception as caught:
        err = as_data_error(caught)  # a pipeline check inside TensorFlow names the shard and key
        if backend.is_chief:
            write_status(run_dir, state="failed", message=f"{type(err).__name__}: {err}"[:500],
                         **_this_start(backend))
        if err is caught:
            raise
        raise err from None  # the TensorFlow error around it only repeats the message


def user_errors() -> tuple[type[Exception], ...]:
    from training.models import ModelError  # defers TensorFlow

    return (ConfigError, BackendError, DataError, ModelError, NoGPUError)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.main", description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", required=True, type=Path, help="run directory made by launch")
    run_dir = parser.parse_args(argv).run_dir.resolve()
    try:
        spec = cluster_from_env(os.environ)  # the chief holds the run's writer lock for the job
        if done := completed_before_restart(run_dir, spec.job_id):
            print(f"[train] {done}", flush=True)  # every rank reads it, so none waits for the chief
            return 0
        with writer_lock(run_dir, spec.job_id, spec.is_chief):
            return run(run_dir, spec.is_chief)
    except user_errors() as err:
        # Problems a user can fix get one line; anything else keeps its traceback.
        print(f"training: error: {err}", file=sys.stderr, flush=True)
        return 1

if __name__ == "__main__":
    sys.exit(main())
