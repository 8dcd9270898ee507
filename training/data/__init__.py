"""Input data: the class-folder -> TFRecord converter, the tf.data pipeline and the demo set.

Importing this package does not load TensorFlow; `pipeline` does, `convert` and `demo` do only
when they write shards.
"""


class DataError(ValueError):
    """A user-facing data problem; its message is one line: what, where, what to do."""
