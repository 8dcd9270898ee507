"""Input data: the class-folder -> TFRecord converter, the tf.data pipeline and the demo set.

Importing this package does not load TensorFlow; `pipeline` does, `convert` and `demo` do only
when they write shards.
"""
import codecs

# Checks inside a tf.data graph cannot raise DataError; they fail with this text before the
# message, and `as_data_error` finds it again in whatever TensorFlow error carries it.
IN_GRAPH_MARK = "DataError: "


class DataError(ValueError):
    """A user-facing data problem; its message is one line: what, where, what to do."""


def as_data_error(err: BaseException) -> BaseException:
    """The DataError a pipeline check raised inside TensorFlow, else `err` itself.

    TensorFlow wraps an assertion in its own error, with graph details around the message and
    quotes and backslashes C-escaped: `... assertion failed: [DataError: shard ...]\\n\\t [[{{node ...}}]]`.
    """
    if isinstance(err, DataError):
        return err
    text = str(err)
    start = text.find("[" + IN_GRAPH_MARK)
    if start < 0:
        return err
    line = text[start + 1 + len(IN_GRAPH_MARK):].split("\n")[0].rstrip()
    line = line[:-1] if line.endswith("]") else line
    line = codecs.escape_decode(line.encode())[0].decode("utf-8", "replace")
    return DataError(line.replace("\n", "\\n"))  # one line, even for a file name with a newline
