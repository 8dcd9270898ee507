"""Data-parallel backends behind one small interface.

A backend owns the process group and the device placement; the loop asks it for the
distribution strategy, the input context of this process, how to wrap the optimizer, extra
callbacks, and whether any worker wants to stop. Nothing else in the loop depends on which
backend runs.
"""
from __future__ import annotations

import os

from core.config import RuntimeConfig
from training.backends.base import Backend, BackendError
from training import signals
from training.backends.horovod import HorovodBackend
from training.cluster import ClusterSpec, cluster_from_env, tf_config


def _use_logical_cpus(count: int) -> None:
    """Splits the CPU into `count` logical devices when there is no GPU (tests, demo)."""
    from training.keras_compat import tf  # defers TensorFlow

    if count > 1 and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


class MirroredBackend(Backend):
    """One process, all GPUs of the node (or logical CPU devices when none); TensorFlow's default
    strategy when that is a single device."""

    name = "mirrored"

    def __init__(self, spec: ClusterSpec, runtime: RuntimeConfig):
        super().__init__(spec, runtime)
        if spec.world_size != 1:
            raise BackendError(f"backend mirrored runs one process but the job started {spec.world_size}; "
                               "use --backend multiworker for several nodes")
        from training.keras_compat import tf  # defers TensorFlow

        _use_logical_cpus(runtime.cpu_devices)
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        if len(devices) == 1:
            # Nothing to mirror: TensorFlow's default strategy, as a bare fit runs. A strategy over
            # one device still runs replica machinery around every step and a distributed dataset
            # (MirroredStrategy cost 10 % or more of a small model's steps on 2 CPU cores,
            # OneDeviceStrategy 3-9 %: bench/README.md).
            self.strategy = tf.distribute.get_strategy()
        elif gpus:
            self.strategy = tf.distribute.MirroredStrategy()
        else:
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            # NCCL needs GPUs; on CPU replicas the reduction goes through one device.
            self.strategy = tf.distribute.MirroredStrategy(
                devices=cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())
        self.num_replicas = self.strategy.num_replicas_in_sync


class MultiWorkerBackend(Backend):
    """MultiWorkerMirroredStrategy: one process per node, TF_CONFIG built from the job layout."""

    name = "multiworker"

    def __init__(self, spec: ClusterSpec, runtime: RuntimeConfig):
        super().__init__(spec, runtime)

        try:
            os.environ["TF_CONFIG"] = tf_config(spec, runtime.port)
        except ValueError as err:
            raise BackendError(f"{err}: start the run with launch, or set runtime.port") from None
        from training.keras_compat import tf  # defers TensorFlow

        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        # Its coordination service takes SIGTERM for itself as it starts: a preemption or scancel
        # would be swallowed (training/signals.py).
        with signals.kept_through():
            _heartbeat_timeout(spec.world_size, runtime.worker_timeout_s)
            self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self._agree = None

    def any_worker(self, flags: tuple[bool, ...]):
        from training.keras_compat import tf  # defers TensorFlow

        if self._agree is None:
            # Compiled once: an eager cross-worker reduce is slow and warns on every call.
            @tf.function
            def agree(value):
                per_replica = self.strategy.run(lambda: tf.identity(value))
                return self.strategy.reduce("SUM", per_replica, axis=None)

            self._agree = agree
        total = self._agree(tf.constant([1.0 if flag else 0.0 for flag in flags]))
        return lambda: tuple(bool(value > 0) for value in total.numpy())

    def all_save(self) -> bool:
        return True


def _heartbeat_timeout(workers: int, timeout_s: int) -> None:
    """TensorFlow's coordination service, which MultiWorkerMirroredStrategy starts, ends every
    worker when one misses its heartbeats for 10 s: a worker stalled that long (a slow shared file
    system, swapping, a stopped process) would fail the run. This sets the service up as the
    strategy would, with runtime.worker_timeout_s as that bound, the one srun --wait uses for a
    lost worker. No public API sets it."""
    from tensorflow.python.distribute.collective_all_reduce_strategy import (  # defers TensorFlow
        coordination_config_pb2,  # the message module the strategy itself uses, wherever TF keeps it
    )
    from tensorflow.python.eager import context  # defers TensorFlow

    context.context().configure_coordination_service(
        service_type="standalone", service_leader="/job:worker/replica:0/task:0",
        coordinated_jobs=[coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=workers)],
        heartbeat_timeout_in_ms=timeout_s * 1000)


def _horovod(spec: ClusterSpec, runtime: RuntimeConfig) -> Backend:
    return HorovodBackend(spec, runtime)


# core/registry.py BACKENDS -> constructor.
BACKEND_BUILDERS = {"mirrored": MirroredBackend, "multiworker": MultiWorkerBackend, "horovod": _horovod}


def create_backend(runtime: RuntimeConfig, env=None) -> Backend:
    """Starts the backend named by `runtime.backend` for this process."""
    spec = cluster_from_env(os.environ if env is None else env)
    return BACKEND_BUILDERS[runtime.backend](spec, runtime)
