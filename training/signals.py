"""Stop requests from SLURM, caught from the first line of the job on.

SIGUSR1 (the warning `--signal` asks for before the time limit) and SIGTERM (preemption,
scancel) would kill the process by default. Installing the handlers before TensorFlow loads
means a signal that lands during start-up is remembered rather than fatal; the training loop
acts on it at its next agreement point.
"""
from __future__ import annotations

import signal

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_received: list[str] = []  # names of the signals received, first one first


def _handle(signum, frame) -> None:
    _received.append(signal.Signals(signum).name)


def install() -> None:
    for sig in SIGNALS:
        signal.signal(sig, _handle)


def first_received() -> str:
    """The first stop signal received, or "" when none came."""
    return _received[0] if _received else ""
