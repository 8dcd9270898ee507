"""Recovery without a person: a requeued job whose step dies in its first seconds is requeued
again, with a short backoff, counted against slurm.max_requeues.

After a node fails, SLURM requeues its job; the restarted job can be killed at once by the failed
step's leftovers on a node that came back (`error: Failed to send MESSAGE_TASK_EXIT`, task killed).
Nothing is wrong with the run: its last checkpoint is whole, and the next start succeeds. A step
that dies late, a first start, a cancel or a stop the trainer wrote itself is not retried.
"""
from __future__ import annotations

import time

from core import slurm

QUICK_DEATH_S = 120  # a step killed this soon after a requeue did not get to train
BACKOFF_S = (5, 15, 30)  # before the nth retry: the failed node's leftovers need a moment to go


def should_retry(exit_code: int, step_seconds: int, restarts: int, continuations: int, max_requeues: int,
                 cancelled: bool) -> bool:
    """Whether a failed step is a requeued job's quick death that a retry will cure."""
    return (exit_code > 128 and not cancelled and restarts >= 1 and step_seconds < QUICK_DEATH_S
            and restarts + continuations < max_requeues)


def retry(job_id: str, restarts: int, max_requeues: int, say) -> bool:
    """Requeues `job_id` after a backoff; False when SLURM refused. `say(message)` records the
    retry first: the requeue ends this job's processes, this one included."""
    time.sleep(BACKOFF_S[min(restarts - 1, len(BACKOFF_S) - 1)])
    say(f"requeued again: the restarted job's step died in its first seconds (a failed node's "
        f"leftovers); restart {restarts + 1} of at most {max_requeues}")
    return slurm.requeue(job_id).returncode == 0
