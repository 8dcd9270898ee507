"""The interface every backend implements (training/backends/): the strategy, the replica count,
the chief, per-process input and the collectives the loop needs."""
from __future__ import annotations

from core.config import RuntimeConfig
from training.cluster import ClusterSpec


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
        from training.keras_compat import tf  # defers TensorFlow

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
