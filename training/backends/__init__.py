"""Data-parallel backends behind one small interface.

A backend owns the process group and the device placement; the loop asks it for the
distribution strategy, the input context of this process, how to wrap the optimizer, extra
callbacks, and whether any worker wants to stop. Nothing else in the loop depends on which
backend runs.
"""
from __future__ import annotations

import os

from core.config import RuntimeConfig
from training.cluster import ClusterSpec, cluster_from_env


class BackendError(RuntimeError):
    """A backend that cannot start here; one line saying what to do."""


class Backend:
    """Common shape. Subclasses set `strategy`, `num_replicas` and override hooks."""

    name = "base"

    def __init__(self, spec: ClusterSpec, runtime: RuntimeConfig):
        self.spec = spec
        self.runtime = runtime
        self.strategy = None
        self.num_replicas = 1

    @property
    def rank(self) -> int:
        return self.spec.rank

    @property
    def world_size(self) -> int:
        return self.spec.world_size

    @property
    def is_chief(self) -> bool:
        """Only the chief writes checkpoints, logs, plots and reports."""
        return self.spec.is_chief

    def per_replica_batch(self, global_batch_size: int) -> int:
        if global_batch_size % self.num_replicas:
            raise BackendError(
                f"data.batch_size {global_batch_size} does not divide evenly over {self.num_replicas} "
                f"replicas; pick a multiple of {self.num_replicas}")
        return global_batch_size // self.num_replicas

    def input_context(self):
        """This process's input pipeline: one per process, files split between them."""
        from training.keras_compat import tf

        return tf.distribute.InputContext(num_input_pipelines=self.world_size,
                                          input_pipeline_id=self.rank,
                                          num_replicas_in_sync=self.num_replicas)

    def distribute(self, dataset_fn):
        """Turns `dataset_fn(input_context) -> per-replica-batched dataset` into what fit takes."""
        return self.strategy.distribute_datasets_from_function(dataset_fn)

    def wrap_optimizer(self, optimizer):
        return optimizer

    def callbacks(self) -> list:
        return []

    def any_worker(self, flags: tuple[bool, ...]):
        """Starts a vote: for each flag, whether it is true on at least one worker.

        A collective where there are several processes: every worker must start it at the same
        point. Returns a function that gives the answer, a tuple of bools. Read it at the next
        agreement point rather than at once: by then the collective has long finished, so the
        read never waits for a step still in flight (a host sync on every check).
        """
        return lambda: tuple(bool(flag) for flag in flags)

    def all_save(self) -> bool:
        """Whether every worker must take part in saving (reads of synced variables are collective)."""
        return False


def _use_logical_cpus(count: int) -> None:
    """Splits the CPU into `count` logical devices when there is no GPU (tests, demo)."""
    from training.keras_compat import tf

    if count > 1 and not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


class MirroredBackend(Backend):
    """One process, all GPUs of the node (or logical CPU devices when none); OneDeviceStrategy
    when that is a single device."""

    name = "mirrored"

    def __init__(self, spec: ClusterSpec, runtime: RuntimeConfig):
        super().__init__(spec, runtime)
        if spec.world_size != 1:
            raise BackendError(f"backend mirrored runs one process but the job started {spec.world_size}; "
                               "use --backend multiworker for several nodes")
        from training.keras_compat import tf

        _use_logical_cpus(runtime.cpu_devices)
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        if len(devices) == 1:
            # Nothing to mirror: MirroredStrategy over one device still runs its replica machinery,
            # which cost 10 % or more of a small model's steps on 2 CPU cores (bench/README.md).
            self.strategy = tf.distribute.OneDeviceStrategy(devices[0].name)
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
        from training.cluster import tf_config

        os.environ["TF_CONFIG"] = tf_config(spec, runtime.port)
        from training.keras_compat import tf

        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self._agree = None

    def any_worker(self, flags: tuple[bool, ...]):
        from training.keras_compat import tf

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


def _horovod(spec: ClusterSpec, runtime: RuntimeConfig) -> Backend:
    from training.backends.horovod import HorovodBackend  # imports Horovod: only when chosen

    return HorovodBackend(spec, runtime)


# core/registry.py BACKENDS -> constructor.
BACKEND_BUILDERS = {"mirrored": MirroredBackend, "multiworker": MultiWorkerBackend, "horovod": _horovod}


def create_backend(runtime: RuntimeConfig, env=None) -> Backend:
    """Starts the backend named by `runtime.backend` for this process."""
    spec = cluster_from_env(os.environ if env is None else env)
    return BACKEND_BUILDERS[runtime.backend](spec, runtime)
