"""Horovod: one process per GPU, ring all-reduce of gradients, rank 0 is the chief."""
from __future__ import annotations

import dataclasses

from core.config import RuntimeConfig
from training.backends.base import Backend, BackendError
from training.cluster import ClusterSpec

BUILD_HINT = "build it for this TensorFlow with training/horovod_build/build.sh"


class HorovodBackend(Backend):
    name = "horovod"

    def __init__(self, spec: ClusterSpec, runtime: RuntimeConfig):
        super().__init__(spec, runtime)
        from training.keras_compat import tf  # defers TensorFlow

        try:
            import horovod.tensorflow.keras as hvd
        except ImportError as err:
            raise BackendError(f"runtime.backend horovod needs Horovod, which is not importable ({err}); "
                               f"{BUILD_HINT}") from None
        self.hvd = hvd
        hvd.init()
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            # One GPU per process, chosen by the rank on this node.
            gpu = gpus[hvd.local_rank() % len(gpus)]
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
        # Horovod's own view of the layout wins: it is what the collectives use.
        self.spec = dataclasses.replace(spec, rank=hvd.rank(), world_size=hvd.size(),
                                        local_rank=hvd.local_rank())
        self.strategy = tf.distribute.get_strategy()
        self.num_replicas = hvd.size()

    def distribute(self, dataset_fn):
        # Keras sees one replica per process; each process feeds its own batches.
        return dataset_fn(self.input_context())

    def wrap_optimizer(self, optimizer):
        return self.hvd.DistributedOptimizer(optimizer)

    def callbacks(self) -> list:
        # Broadcast after the optimizer has built its slots (first batch), so a resumed run's
        # optimizer state on rank 0 reaches every rank; then average metrics over ranks.
        return [self.hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                self.hvd.callbacks.MetricAverageCallback()]

    def any_worker(self, flags: tuple[bool, ...]):
        from training.keras_compat import tf  # defers TensorFlow

        total = self.hvd.allreduce(tf.constant([1.0 if flag else 0.0 for flag in flags]), op=self.hvd.Sum)
        return lambda: tuple(bool(value > 0) for value in total.numpy())
