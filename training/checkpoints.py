"""HDF5 checkpoints in the run directory: resumable latest, best by val loss, final model.

`latest.json` is the commit point of a resumable checkpoint: it names the HDF5 file holding
weights and optimizer state (including the step counter, hence the LR schedule position) and
records epoch, step, best metric and the history so far. Files are written to a temporary name
and renamed, so a kill at any moment leaves the previous checkpoint loadable.

A checkpoint is either at an epoch's end (a stop agreed on an epoch's last step included) or
mid-epoch (`partial_epoch`: a stop request, or `train.checkpoint_every_steps` /
`train.checkpoint_every_minutes`); `training.loop` resumes a mid-epoch one at its step. When an
epoch's checkpoint is also the best so far, `best.h5` is a hard link to it (a copy where the file
system has none), not a second save of the model.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import h5py

from core import rundir
from core.fsutil import atomic_path, atomic_write_text
from training.backends import Backend
from training.keras_compat import keras

# HDF5 is the format this project promises (seed requirement); tf-keras calls it legacy.
warnings.filterwarnings("ignore", message="You are saving your model as an HDF5 file")


class CheckpointManager:
    """Saves and restores checkpoints; only the chief's files land in the run directory."""

    def __init__(self, run_dir: Path, backend: Backend):
        self.dir = Path(run_dir) / rundir.CHECKPOINTS
        self.backend = backend
        if backend.is_chief:
            self.dir.mkdir(parents=True, exist_ok=True)
            # Temporary files of a write that was killed (kill -9, node loss) are never valid.
            for stale in self.dir.glob(".*.tmp*"):
                stale.unlink(missing_ok=True)

    @property
    def best_path(self) -> Path:
        return self.dir / rundir.BEST_CHECKPOINT

    def load_state(self) -> dict | None:
        """The committed state of the latest checkpoint, or None for a fresh run."""
        path = self.dir / rundir.LATEST
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if not (self.dir / state["weights"]).is_file():
            raise FileNotFoundError(f"{path} names {state['weights']}, which is missing; "
                                    f"delete {rundir.LATEST} to restart the run from scratch")
        return state

    def _save_model(self, model: keras.Model, path: Path) -> None:
        """Writes `path` on the chief. Under MultiWorkerMirrored every worker must also save,
        because reading synchronised variables (batch-norm statistics) is a collective; the
        others write to a throw-away folder."""
        if self.backend.is_chief:
            with atomic_path(path) as tmp:
                model.save(tmp, include_optimizer=True, save_format="h5")
        elif self.backend.all_save():
            scratch = tempfile.mkdtemp(prefix="ckpt-worker-")
            try:
                model.save(Path(scratch) / path.name, include_optimizer=True, save_format="h5")
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

    def save_latest(self, model: keras.Model, state: dict, best: bool = False) -> str:
        """Saves a resumable checkpoint; `state` holds epoch, step, best and history.

        Every worker calls it (see `_save_model`); only the chief writes. With `best`, the same
        file also becomes the best checkpoint, linked rather than written a second time, before
        `latest.json` commits both. Returns the file name.
        """
        name = rundir.LATEST_WEIGHTS.format(step=state["step"])
        self._save_model(model, self.dir / name)
        if not self.backend.is_chief:
            return name
        if best:
            with atomic_path(self.best_path) as tmp:
                tmp.unlink()
                try:
                    os.link(self.dir / name, tmp)
                except OSError:  # a file system without hard links
                    shutil.copyfile(self.dir / name, tmp)
        committed = self.dir / rundir.LATEST
        previous = json.loads(committed.read_text())["weights"] if committed.is_file() else name
        atomic_write_text(committed, json.dumps({**state, "weights": name}, indent=1))
        # Keep the new and the previous committed files. Not by step order: a cut epoch that
        # cannot continue at its step (steps per epoch changed) restarts below its checkpoint.
        keep = {name, previous}
        for old in self.dir.glob(rundir.LATEST_GLOB):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        return name

    def save_final(self, model: keras.Model, path: Path) -> None:
        self._save_model(model, path)

    def restore(self, model: keras.Model, state: dict) -> None:
        """Loads weights and optimizer state saved by `save_latest` into a compiled model.

        Call inside the strategy scope. The optimizer's slots are built first so the saved
        values (step counter first) can be assigned in order.
        """
        path = self.dir / state["weights"]
        model.load_weights(path)
        optimizer = model.optimizer
        optimizer.build(model.trainable_variables)
        with h5py.File(path, "r") as f:
            group = f["optimizer_weights"]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            values = [group[n][()] for n in names]
        optimizer.set_weights(values)
