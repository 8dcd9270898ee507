"""Run reports written by the chief: live curves, prediction grids, confusion, summary.json.

The chief calls `write_curves(run_dir)` after every epoch, then `write_prediction_report(...)`
and `write_summary(...)` once training ends. Attributes load lazily so that importing the
package (e.g. for `write_summary`) does not pull in TensorFlow or matplotlib.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "write_curves": "training.report.curves",
    "write_prediction_report": "training.report.predictions",
    "write_summary": "training.report.summary",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
