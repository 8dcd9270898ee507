"""The text task's pieces: a tokenizer adapted once and reloaded the same, pretrained vectors,
the models, and the one-line errors for bad text settings."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.config import ConfigError, ModelConfig, TextConfig, load_config
from training.data import DataError

REPO = Path(__file__).resolve().parent.parent
TEXTS = ["a good movie", "a bad plot", "bad acting", "bad", "fine"]  # bad x3, a x2, the rest once


def texts_ds(texts=TEXTS):
    from training.keras_compat import tf

    return lambda: tf.data.Dataset.from_tensor_slices(texts)


def test_tokenizer_is_adapted_once_and_reloaded_unchanged(tmp_path):
    from training import tokenizer

    text = TextConfig(max_tokens=50, sequence_length=6)
    layer, spec, digest = tokenizer.prepare(tmp_path, text, texts_ds(), is_chief=True, log=lambda _: None)
    path = tokenizer.tokenizer_path(tmp_path)
    assert spec["vocabulary"][:4] == ["", "[UNK]", "bad", "a"]  # padding, unknown, then by frequency
    ids = layer(["a bad unseenword"]).numpy().tolist()
    assert ids == [[3, 2, 1, 0, 0, 0]]
    stamp = path.stat().st_mtime_ns

    def must_not_adapt():
        raise AssertionError("adapted again")

    again, _, digest2 = tokenizer.prepare(tmp_path, text, must_not_adapt, is_chief=True, log=lambda _: None)
    assert digest2 == digest and path.stat().st_mtime_ns == stamp  # a resume reuses the same file
    assert again(["a bad unseenword"]).numpy().tolist() == ids
    # A worker that is not the chief reads the chief's file and never adapts.
    assert tokenizer.prepare(tmp_path, text, must_not_adapt, is_chief=False, log=lambda _: None)[2] == digest
    with pytest.raises(DataError, match="text.sequence_length 9 .* differ from the run's saved tokenizer"):
        tokenizer.prepare(tmp_path, TextConfig(max_tokens=50, sequence_length=9), must_not_adapt, True)


def test_a_vocabulary_of_two_tokens_is_an_error(tmp_path):
    from training import tokenizer

    with pytest.raises(DataError, match="found 0 words"):
        tokenizer.prepare(tmp_path, TextConfig(), texts_ds(["...", "!!"]), is_chief=True, log=lambda _: None)
    assert not tokenizer.tokenizer_path(tmp_path).exists()


def test_glove_vectors_initialise_known_words_and_a_wrong_dimension_is_one_line(tmp_path):
    from training.embeddings import embedding_matrix
    from training.text_models import build_text_model

    vocabulary = ["", "[UNK]", "good", "bad", "film"]
    glove = tmp_path / "glove.4d.txt"
    glove.write_text("good 1 2 3 4\nunrelated 9 9 9 9\nfilm -1 -2 -3 -4\n")
    matrix, hits = embedding_matrix(glove, vocabulary, 4)
    assert hits == 2
    text = TextConfig(sequence_length=5, embedding_dim=4, hidden_dim=3)
    model = build_text_model(ModelConfig(name="lstm", dropout=0.0), text, len(vocabulary), 2, matrix)
    weights = model.get_layer("embedding").get_weights()[0]
    assert weights[2].tolist() == [1, 2, 3, 4] and weights[4].tolist() == [-1, -2, -3, -4]
    assert abs(weights[3]).max() <= 0.05  # "bad" is not in the file: a random row
    with pytest.raises(DataError) as err:
        embedding_matrix(glove, vocabulary, 8)
    assert str(err.value) == (f"text.embeddings_file {glove} holds 4-dimensional vectors but text.embedding_dim "
                              "is 8; set text.embedding_dim=4 or use a 8-d file")


@pytest.mark.parametrize("name, bidirectional, layers", [("lstm", True, 2), ("gru", False, 1),
                                                         ("bag_of_embeddings", False, 1)])
def test_text_models_mask_padding(name, bidirectional, layers):
    from training.text_models import build_text_model

    # 16 units: with 4, the bag of embeddings' ReLU layer was now and then dead for both inputs
    # (every output exactly 1/3) and the last assertion failed: once in the suite, 1 model in 60
    # built in a loop; none of 60 with 16.
    text = TextConfig(sequence_length=6, embedding_dim=8, hidden_dim=16, number_of_layers=layers,
                      bidirectional=bidirectional)
    model = build_text_model(ModelConfig(name=name, dropout=0.0), text, 20, 3)
    padded = np.array([[5, 6, 0, 0, 0, 0]], np.int32)
    probs = model.predict_on_batch(padded)
    assert probs.shape == (1, 3) and np.allclose(probs.sum(), 1.0, atol=1e-5)
    # Masked: whatever vector the padding id holds, the output stays the same.
    embedding = model.get_layer("embedding")
    weights = embedding.get_weights()[0]
    weights[0] = weights[7] = 5.0  # padding and word 7 both far from the small random rows
    embedding.set_weights([weights])
    assert np.allclose(model.predict_on_batch(padded), probs, atol=1e-6)
    # A real word there does change it.
    assert not np.allclose(model.predict_on_batch(np.array([[5, 6, 7, 0, 0, 0]], np.int32)), probs, atol=1e-6)


@pytest.mark.parametrize("override, message", [
    ("text.sequence_length=0", "text.sequence_length.*below the minimum 1"),
    ("data.image_size=64", "data.image_size is a key of task image, but the task is text"),
    ("optimizer.clipnorm=-1", "optimizer.clipnorm.*below the minimum 0"),
])
def test_bad_text_settings_fail_when_the_config_loads(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["task=text", override])


def test_launch_refuses_a_missing_column_or_a_wrong_dimension_before_anything_is_made(tmp_path):
    import subprocess
    import sys

    reviews = tmp_path / "reviews.csv"
    reviews.write_bytes("\ufeffbody,label\nfine,pos\n".encode())
    glove = tmp_path / "glove.txt"
    glove.write_text("good 1 2 3\n")
    runs = tmp_path / "runs"
    for extra, message in (([], f"{reviews} has no column 'text' (its columns: body, label); set data.text_column"),
                           (["data.text_column=body", f"text.embeddings_file={glove}"],
                            "holds 3-dimensional vectors but text.embedding_dim is 64")):
        done = subprocess.run([sys.executable, "-m", "launcher.cli", "--config", str(REPO / "configs" / "sentiment_demo.yaml"),
                               "--cluster", "local", "--run-root", str(runs),
                               "task=text", "data.source=csv", f"data.data_dir={reviews}", *extra],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not runs.exists()


def test_a_class_smaller_than_one_batch_is_an_error_naming_it(tmp_path):
    from core.config import DataConfig
    from training.data.text_pipeline import text_info

    rows = [f"{i} good\tpos" for i in range(40)] + [f"{i} bad\tneg" for i in range(40)] + ["odd one\tweird"] * 3
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(r.replace("\t", ",") + "\n" for r in rows))
    data = DataConfig(source="csv", data_dir=str(tmp_path / "t.csv"), batch_size=16, val_fraction=0.25)
    with pytest.raises(DataError, match="class 'weird' has 2 training texts, fewer than one global batch"):
        text_info(data)
    data.classes = ["neg", "pos"]  # the fix the message names
    assert (text_info(data).train_examples, text_info(data).val_examples) == (60, 20)


@pytest.mark.parametrize("source", ["csv", "tfrecord"])
def test_each_worker_reads_its_own_part_of_the_texts(tmp_path, source):
    from core.config import DataConfig
    from training.data.convert_text import convert_text
    from training.data.text_pipeline import text_dataset, text_info
    from training.keras_compat import tf

    rows = [(f"good text {i}", "pos") for i in range(30)] + [(f"bad text {i}", "neg") for i in range(30)]
    (tmp_path / "t.csv").write_text("text,label\n" + "".join(f"{t},{lab}\n" for t, lab in rows))
    data = DataConfig(source="csv", data_dir=str(tmp_path / "t.csv"), batch_size=8, val_fraction=0.2)
    if source == "tfrecord":
        convert_text(tmp_path / "t.csv", tmp_path / "shards", val_fraction=0.2, shards={"train": 4}, log=lambda _: None)
        data = DataConfig(source="tfrecord", data_dir=str(tmp_path / "shards"), batch_size=8)
    info = text_info(data)
    assert (info.class_names, info.train_examples, info.val_examples) == (["neg", "pos"], 48, 12)
    parts = []
    for rank in (0, 1):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=rank)
        parts.append({t.decode() for t, _ in text_dataset(data, "train", False, context).as_numpy_iterator()})
    assert parts[0] and parts[1] and not parts[0] & parts[1] and len(parts[0] | parts[1]) == 48
    pairs = {(t.decode(), int(lab)) for t, lab in text_dataset(data, "val", False).as_numpy_iterator()}
    assert len(pairs) == 12 and all((lab == 1) == t.startswith("good") for t, lab in pairs)
