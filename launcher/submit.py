"""Starting a rendered job: through sbatch (via launcher/submitit_adapter.py) or as local processes.

submitit is imported only when a job is submitted; `launch --dry-run` never pays for it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core import rundir, slurm
from core.errors import UserError
from launcher.submitit_adapter import SbatchRefused, submit_script

SINFO_HINT = 'sinfo -o "%N %G %f" lists what the nodes offer'


class SubmitError(UserError):
    """The job could not be started; the message is one line for the user."""


@dataclass(frozen=True)
class Target:
    """Where a launch's job goes, decided once from runtime.cluster and the flags: every command
    asks it rather than comparing "local" and "slurm" itself.

    on_slurm: the job is for SLURM (runtime.cluster slurm, or auto with sbatch on PATH).
    why: what decided it, for the user's note.
    dry_run: only print what would run.
    emit: --emit-sbatch FILE: write the script there for a hand-run sbatch.
    """
    on_slurm: bool
    why: str
    dry_run: bool = False
    emit: Path | None = None

    @classmethod
    def choose(cls, setting: str, *, dry_run: bool = False, emit: str | Path | None = None) -> Target:
        """The target for runtime.cluster `setting` (auto | slurm | local).

        Raises:
            UserError: the job would be submitted but sbatch is not on PATH.
        """
        if setting == "local":
            on_slurm, why = False, "runtime.cluster is local"
        elif setting == "slurm" or slurm.available():
            on_slurm, why = True, f"runtime.cluster is {setting}"
        else:
            on_slurm, why = False, "no sbatch on PATH and runtime.cluster is auto"
        target = cls(on_slurm, why, dry_run, Path(emit) if emit else None)
        if target.submits and not slurm.available():
            raise UserError("runtime.cluster is slurm but sbatch is not on PATH; run launch on a SLURM "
                            "login node, or pass --cluster local")
        return target

    @property
    def for_slurm(self) -> bool:
        """The script is for sbatch (submitted, emitted, or would be): check it against the cluster."""
        return self.on_slurm or self.emit is not None

    @property
    def submits(self) -> bool:
        return self.on_slurm and not self.dry_run and self.emit is None

    @property
    def runs_here(self) -> bool:
        return not self.on_slurm and not self.dry_run and self.emit is None

    def dry_run_note(self, what: str) -> str | None:
        """The note a dry run prints when the real launch would not go to SLURM."""
        return None if self.on_slurm else f"without --dry-run {what} ({self.why})"


def slurm_refusal(output: str, asked: str) -> str:
    """One line from sbatch's output: SLURM's own error, what was asked, where to look."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    failed = [line for line in errors if "submission failed" in line.lower()]
    said = (failed or errors or lines or ["sbatch failed without saying why"])[-1]
    return f"{said} (asked for {asked}); {SINFO_HINT}"


def submit_slurm(script: str, run_dir: Path, asked: str, fresh: bool) -> str:
    """Submits `script` with sbatch and returns the job id.

    Args:
        script: the rendered batch script.
        run_dir: the run directory; submitit keeps its copy under RUN_DIR/logs/submitit.
        asked: the resource request in sbatch's words, for the refusal message.
        fresh: the run directory was made for this launch; it is removed if sbatch refuses, so a
            refused launch leaves nothing behind. A resumed run directory is never removed.

    Raises:
        SubmitError: sbatch refused the job or could not be run.
    """
    try:
        return submit_job(script, run_dir / rundir.LOGS / rundir.SUBMITIT, asked)
    except SubmitError:
        if fresh:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def submit_job(script: str, submitit_folder: Path, asked: str) -> str:
    """Submits any rendered script with sbatch (the one way `launch` submits); returns the job id.

    Args:
        script: the rendered batch script.
        submitit_folder: where submitit keeps its copy of the script; made if missing.
        asked: the resource request in sbatch's words, for the refusal message.

    Raises:
        SubmitError: sbatch refused the job or could not be run.
    """
    try:
        return submit_script(script, submitit_folder)
    except SbatchRefused as err:
        message = slurm_refusal(str(err), asked)
    except (RuntimeError, OSError) as err:
        message = f"could not submit with sbatch: {(str(err).splitlines() or [repr(err)])[0]}"
    raise SubmitError(message)


def _tee(source: BinaryIO, log: BinaryIO) -> None:
    """Copies rank 0's output to the terminal and its log as it arrives (progress bars included)."""
    terminal = getattr(sys.stdout, "buffer", None)
    while chunk := os.read(source.fileno(), 65536):
        log.write(chunk)
        log.flush()
        if terminal is not None:
            terminal.write(chunk)
            terminal.flush()
        else:  # a replaced sys.stdout (tests) takes text
            sys.stdout.write(chunk.decode(errors="replace"))


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code  # killed by signal N: the shell's 128 + N


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    # Each rank leads its own process group, so its helpers (data loaders, shells) go with it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _stop(procs: list[subprocess.Popen], grace_s: float = 10.0) -> list[int]:
    """Terminates the ranks still running; kills those that ignore it. Returns their ranks."""
    running = [rank for rank, proc in enumerate(procs) if proc.poll() is None]
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for rank in running:
        try:
            procs[rank].wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(procs[rank], signal.SIGKILL)
            procs[rank].wait()
    return running


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def free_ports(count: int, tries: int = 20) -> int:
    """The first of `count` consecutive TCP ports that are free on this host now.

    The kernel picks the first (binding port 0) from its ephemeral range, clear of the blocks
    SLURM jobs take (training/cluster.py). The ports are free only when asked: a rare other
    process may bind one before the ranks do.

    Raises:
        SubmitError: no such run of ports was found.
    """
    for _ in range(tries):
        with contextlib.ExitStack() as held:
            first = socket.socket()
            held.enter_context(first)
            first.bind(("", 0))
            port = first.getsockname()[1]
            try:
                for other in range(port + 1, port + count):
                    held.enter_context(socket.socket()).bind(("", other))
            except (OSError, OverflowError):
                continue
            return port
    raise SubmitError(f"found no {count} free ports in a row on this host; set runtime.port to the "
                      f"first of {count} ports that are")


def run_local(run_dir: Path, python: str, world_size: int, worker_timeout_s: int, port: int) -> int:
    """Runs the job's ranks as processes on this machine and waits for them.

    Rank 0 streams to the terminal and to RUN_DIR/logs/local-0.out; rank i writes only
    logs/local-<i>.out. When one rank fails, the others get worker_timeout_s to finish before
    they are terminated, as srun --wait does on the cluster.

    Args:
        port: runtime.port. When 0, every rank gets LAUNCH_PORT, the first of world_size ports
            free on this host, so that local runs at once, or beside a test cluster's jobs on
            this host, do not share ports.

    Returns:
        0 when every rank succeeded, else the exit code of the first rank that failed.
    """
    logs = run_dir / rundir.LOGS
    logs.mkdir(parents=True, exist_ok=True)
    # SLURM variables of an enclosing allocation would make the trainer think it is a job step.
    base_env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    if not port:
        base_env["LAUNCH_PORT"] = str(free_ports(world_size))
    command = [python, "-u", "-m", "training.main", "--run-dir", str(run_dir)]
    procs: list[subprocess.Popen] = []
    files: list[BinaryIO] = []
    tee = None
    # The ranks run in their own sessions, out of reach of the terminal's signals: turn a
    # SIGTERM of launch into the same clean stop as Ctrl-C.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        for rank in range(world_size):
            env = {**base_env, "LAUNCH_RANK": str(rank), "LAUNCH_WORLD_SIZE": str(world_size),
                   "LAUNCH_LOCAL_RANK": str(rank), "LAUNCH_RUN_DIR": str(run_dir)}
            log = open(logs / f"local-{rank}.out", "ab")  # append: a resumed run keeps its history
            files.append(log)
            out = subprocess.PIPE if rank == 0 else log
            procs.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True))
            if rank == 0:
                tee = threading.Thread(target=_tee, args=(procs[0].stdout, log), daemon=True)
                tee.start()
        return _wait(procs, logs, worker_timeout_s)
    except FileNotFoundError as err:
        raise SubmitError(f"cannot start {python}: {err.strerror}; set runtime.python to an "
                          "interpreter that exists here") from None
    except KeyboardInterrupt:
        _stop(procs)
        print("launch: interrupted; stopped every rank", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        signal.signal(signal.SIGTERM, previous)
        if tee is not None:
            tee.join(timeout=5)
        for log in files:
            log.close()


def _wait(procs: list[subprocess.Popen], logs: Path, worker_timeout_s: int) -> int:
    failed, failed_at = None, 0.0  # the first rank seen failing, and when
    while True:
        running = [proc for proc in procs if proc.poll() is None]
        if failed is None:
            failed = next((rank for rank, proc in enumerate(procs) if proc.returncode), None)
            if failed is not None:
                failed_at = time.monotonic()
                later = f"; the other ranks get {worker_timeout_s} s to finish" if running else ""
                print(f"launch: rank {failed} failed with exit code "
                      f"{_exit_code(procs[failed].returncode)} (see {logs / f'local-{failed}.out'}){later}",
                      file=sys.stderr, flush=True)
        if not running:
            break
        if failed is not None and time.monotonic() - failed_at > worker_timeout_s:
            stopped = _stop(procs)
            print(f"launch: stopped rank(s) {', '.join(map(str, stopped))} {worker_timeout_s} s after "
                  f"rank {failed} failed", file=sys.stderr, flush=True)
            break
        time.sleep(0.1)
    return 0 if failed is None else _exit_code(procs[failed].returncode)
