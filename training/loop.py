"""The training loop: owns the steps, evaluation cadence, checkpoints, logs and resume.

Every worker runs `train`; only the chief writes files into the run directory.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from core import rundir
from core.config import Config, dump
from core.fsutil import atomic_write_text
from training import task
from training.backends import Backend
from training.callbacks import (LrLog, RunRecorder, RunTensorBoard, StopAndCheckpoint, schedule_of, write_history,
                                write_status)
from training.checkpoints import CheckpointManager
from training.keras_compat import keras, tf
from training.report.curves import LiveCurves
from training.tasks import create_task


def _log(backend: Backend, message: str) -> None:
    if backend.is_chief:
        print(f"[train] {message}", flush=True)


def _flat_hparams(cfg: Config) -> dict:
    """`section.key` -> value for TensorBoard's HParams tab; lists become their text."""
    flat = {}
    for section, values in cfg.to_dict().items():
        if not isinstance(values, dict):  # the top-level task
            flat[section] = values
            continue
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def _tensorboard(cfg: Config, run_dir: Path, backend: Backend, recorder: RunRecorder) -> list:
    """TensorBoard on the chief; under MultiWorkerMirrored the callback itself sends the other
    workers' events to temporary folders, so every worker gets one there."""
    if not (backend.is_chief or backend.all_save()):
        return []
    logdir = run_dir / rundir.TENSORBOARD
    if backend.is_chief:
        from tensorboard.plugins.hparams import api as hparams

        writer = tf.summary.create_file_writer(str(logdir / "config"))
        with writer.as_default():
            tf.summary.text("config", "```\n" + dump(cfg) + "\n```", step=0)
        writer.close()
        # The hparams at the log dir's root: the HParams tab takes a session's metrics from the
        # runs below it (train/, validation/), so a sweep's points line up with their accuracy.
        writer = tf.summary.create_file_writer(str(logdir))
        with writer.as_default():
            hparams.hparams(_flat_hparams(cfg))
        writer.close()
    return [RunTensorBoard(recorder, log_dir=str(logdir), update_freq=cfg.train.log_every_steps,
                           write_graph=False, profile_batch=0)]


def _write_rank_report(the_task, run_dir: Path, backend: Backend, model: keras.Model) -> None:
    """Every process: where it ran, which shards it read and a digest of its final weights, in
    logs/. Replicas that drifted apart, two ranks that read the same files or took the same GPU
    of a node show up here."""
    # Trainable weights only: gradients are all-reduced, so these must agree bit for bit, while
    # batch-norm moving statistics follow each rank's own batches under Horovod.
    digest = hashlib.sha256()
    for variable in model.trainable_weights:  # under MultiWorker a collective read: all call it
        digest.update(variable.numpy().tobytes())
    report = {"rank": backend.rank, "world_size": backend.world_size, "node": backend.spec.node_name,
              "local_rank": backend.spec.local_rank,  # which of the node's GPUs it took
              "train_shards": the_task.shard_files(backend.input_context()),
              "trainable_weights_sha256": digest.hexdigest()}
    atomic_write_text(run_dir / rundir.LOGS / f"rank-{backend.rank}.json", json.dumps(report, indent=1))


def train(cfg: Config, run_dir: Path, backend: Backend) -> dict:
    """Trains to `cfg.train.epochs`, resuming from the run's latest checkpoint if there is one.

    Checkpoints come at each epoch's end, and mid-epoch on a stop request and every
    `train.checkpoint_every_steps` steps / `train.checkpoint_every_minutes` minutes. A stop
    agreed on an epoch's last step is that epoch's end: the epoch is recorded and saved as
    usual, and the resumed run starts with the next one.

    Resuming a mid-epoch checkpoint continues at its step: the cut epoch runs only its
    remaining steps, so the step count, the LR schedule and the epoch numbering are those of an
    uninterrupted run and no finished step is redone. Data order: the training input is an
    endless shuffled stream and an epoch is `steps_per_epoch` batches of it, so even without a
    resume an epoch is not an exact pass over the examples. After any resume the stream starts
    again with a new shuffle (seed + rank + step reached), so the rest of a cut epoch is a fresh
    random draw from the whole split: an example may come twice or not at all in that epoch, and
    the batches the run began with are not replayed. The cut epoch's history row (loss,
    accuracy, time, speed) covers the steps run after the resume. Only if the steps per epoch
    changed since the checkpoint is the cut epoch redone from its start with the weights reached.

    Returns:
        A dict with `state` ("completed" or "stopped"), the epochs done and, when stopped, the step.
    """
    started = time.time()
    seed = cfg.train.seed + backend.rank  # different shuffles and augmentations per worker
    keras.utils.set_random_seed(seed)
    task.set_precision(cfg.train.precision)
    the_task = create_task(cfg)
    info = the_task.prepare(run_dir, backend)
    plan = task.make_plan(cfg, backend, info)
    _log(backend, plan.describe())

    checkpoints = CheckpointManager(run_dir, backend)
    state = checkpoints.load_state()
    model = task.build_compiled_model(cfg, the_task, plan, backend, seed)
    initial_epoch = 0
    steps_into_epoch = 0  # steps of the cut epoch already done, when resuming mid-epoch
    if state is not None:
        with backend.strategy.scope():
            checkpoints.restore(model, state)
        initial_epoch = state["epoch"]
        resumed = f"resumed from {state['weights']}: {initial_epoch} epochs done, step {state['step']}"
        if state.get("partial_epoch"):
            steps_into_epoch = state["step"] - initial_epoch * plan.steps_per_epoch
            if not 0 <= steps_into_epoch < plan.steps_per_epoch:
                # The steps per epoch changed since the checkpoint: its step is no place in this
                # run's epochs. Redo the cut epoch from its start with the weights reached; the
                # step counter goes back so the LR schedule and the epoch numbering stay aligned.
                steps_into_epoch = 0
                model.optimizer.iterations.assign(initial_epoch * plan.steps_per_epoch)
                resumed += f"; epoch {initial_epoch + 1} restarts from its beginning"
            elif steps_into_epoch:
                resumed += (f"; epoch {initial_epoch + 1} continues at step {state['step']} "
                            f"({steps_into_epoch} of its {plan.steps_per_epoch} steps done)")
        _log(backend, resumed)
    if backend.is_chief:
        atomic_write_text(rundir.RunDir(run_dir).model_spec,
                          json.dumps(the_task.model_spec(plan), indent=1))
        write_history(run_dir, [r for r in (state or {}).get("history", []) if r["epoch"] <= initial_epoch])
        write_status(run_dir, state="running", epoch=initial_epoch, epochs=plan.epochs,
                     job_id=backend.spec.job_id, restarts=backend.spec.restart_count, message="")

    # A resumed stream is shuffled anew rather than replaying the batches the run began with.
    data_seed = seed + (int(model.optimizer.iterations.numpy()) if state is not None else 0)
    train_ds, val_ds = task.datasets(cfg, the_task, plan, backend, data_seed)
    lr_log = curves = None
    if backend.is_chief:  # the only writer of lr.csv and the plots
        lr_log = LrLog(run_dir, cfg.train.log_every_steps, schedule_of(model.optimizer))
        lr_log.start(int(model.optimizer.iterations.numpy()))
        curves = LiveCurves(run_dir, log=lambda line: _log(backend, line))
    recorder = RunRecorder(run_dir, backend, checkpoints, plan, state, lr_log=lr_log, curves=curves)
    controls = StopAndCheckpoint(backend, recorder, cfg.train.checkpoint_every_steps,
                                 cfg.train.checkpoint_every_minutes, cfg.train.steps_per_execution,
                                 log=lambda line: _log(backend, line))
    _log(backend, controls.describe())
    # Before the recorder: a stop on an epoch's last step is known when the epoch is recorded.
    callbacks = [*backend.callbacks(), controls, recorder, *_tensorboard(cfg, run_dir, backend, recorder)]

    def fit(first_epoch: int, last_epoch: int, steps_per_epoch: int) -> None:
        model.fit(train_ds, epochs=last_epoch, initial_epoch=first_epoch, steps_per_epoch=steps_per_epoch,
                  validation_data=val_ds, validation_steps=plan.validation_steps, callbacks=callbacks,
                  verbose=2 if backend.is_chief else 0)

    finished = False
    try:
        if steps_into_epoch and initial_epoch < plan.epochs:
            # Keras runs whole epochs of one length: the rest of the cut epoch is a fit of its own.
            fit(initial_epoch, initial_epoch + 1, plan.steps_per_epoch - steps_into_epoch)
            initial_epoch += 1
        if initial_epoch < plan.epochs and controls.stopped_at is None:
            fit(initial_epoch, plan.epochs, plan.steps_per_epoch)
        finished = True
    finally:
        if curves is not None:
            curves.close(draw=finished)  # the final plots, drawn here: they show every epoch

    stop = controls.stopped_at
    if stop is not None:
        where = (f"at the end of epoch {stop.epoch + 1}" if stop.end_of_epoch
                 else f"in epoch {stop.epoch + 1}")
        _log(backend, f"stop requested: saved a resumable checkpoint {where}, step {stop.step}")
        return {"state": "stopped", "epoch": stop.epochs_done, "step": stop.step, "plan": plan,
                "model": model, "signal": controls.signal_name}

    checkpoints.save_final(model, rundir.RunDir(run_dir).final_model)
    _write_rank_report(the_task, run_dir, backend, model)
    epochs_done = len(recorder.history)
    _log(backend, f"finished {epochs_done} epochs in {time.time() - started:.1f} s")
    return {"state": "completed", "epoch": epochs_done, "plan": plan, "model": model,
            "wall_time_s": time.time() - started, "history": recorder.history, "task": the_task}
