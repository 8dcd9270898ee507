"""Stop requests from SLURM, caught from the first line of the job on.

SIGUSR1 (the warning `--signal` asks for before the time limit) and SIGTERM (preemption,
scancel) would kill the process by default. Installing the handlers before TensorFlow loads
means a signal that lands during start-up is remembered rather than fatal; the training loop
acts on it at its next agreement point.

TensorFlow's coordination service (MultiWorkerMirroredStrategy starts it) puts its own SIGTERM
handler in place of these, which only tells the service, so a preemption would go unnoticed:
`kept_through` holds the signals while such code runs and hands them to these handlers after.
"""
from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_received: list[str] = []  # names of the signals received, first one first


def _handle(signum, frame) -> None:
    name = signal.Signals(signum).name
    if not _received:  # said once, in the job's log; os.write: a print here could re-enter one in progress
        os.write(2, f"[train] {name} received (pid {os.getpid()}): the workers stop together at their next "
                    "vote and save a checkpoint\n".encode())
    _received.append(name)


def install() -> None:
    for sig in SIGNALS:
        signal.signal(sig, _handle)


@contextlib.contextmanager
def kept_through() -> Iterator[None]:
    """Runs the block with the stop signals held back (threads it starts inherit that, so the
    main thread takes them later), then puts these handlers back and lets any held signal in."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        install()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def first_received() -> str:
    """The first stop signal received, or "" when none came."""
    return _received[0] if _received else ""
