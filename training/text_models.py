"""Text model registry: token ids in (0 = padding), class probabilities out.

The tokenizer (training/tokenizer.py) runs in the input pipeline, so a model takes int32
[batch, sequence_length] ids. Padding is masked: recurrent layers skip it and the bag of
embeddings averages only real tokens.
"""
from __future__ import annotations

import numpy as np

from core.config import ModelConfig, TextConfig
from training.keras_compat import keras

PAD_INDEX = 0  # TextVectorization pads with 0 and puts the out-of-vocabulary token at 1


def _stack(layer_type):
    """Stacked recurrent layers of `layer_type`, optionally bidirectional; the last returns one vector."""
    def build(x, text: TextConfig, dropout: float):
        for i in range(text.number_of_layers):
            layer = layer_type(text.hidden_dim, return_sequences=i < text.number_of_layers - 1)
            x = (keras.layers.Bidirectional(layer) if text.bidirectional else layer)(x)
            if dropout > 0:
                x = keras.layers.Dropout(dropout)(x)
        return x
    return build


def _bag_of_embeddings(x, text: TextConfig, dropout: float):
    """Mean of the word vectors (padding masked out), then one dense layer: seconds on a CPU."""
    x = keras.layers.GlobalAveragePooling1D()(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout)(x)
    return keras.layers.Dense(text.hidden_dim, activation="relu")(x)


# core/registry.py TASKS["text"].models -> body after the embedding.
TEXT_BUILDERS = {"lstm": _stack(keras.layers.LSTM), "gru": _stack(keras.layers.GRU),
                 "bag_of_embeddings": _bag_of_embeddings}


def build_text_model(model: ModelConfig, text: TextConfig, vocab_size: int, num_classes: int,
                     embedding: np.ndarray | None = None) -> keras.Model:
    """Embedding (masking padding) -> the named body -> softmax over `num_classes`.

    Args:
        embedding: initial [vocab_size, embedding_dim] weights (pretrained vectors), or None.
    """
    inputs = keras.Input((text.sequence_length,), dtype="int32", name="tokens")
    init = keras.initializers.Constant(embedding) if embedding is not None else "uniform"
    x = keras.layers.Embedding(vocab_size, text.embedding_dim, embeddings_initializer=init, mask_zero=True,
                               trainable=text.embeddings_trainable, name="embedding")(inputs)
    x = TEXT_BUILDERS[model.name](x, text, model.dropout)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classes")(x)
    return keras.Model(inputs, outputs, name=model.name)


def model_parameters(model: ModelConfig, text: TextConfig, vocab_size: int, num_classes: int) -> dict:
    """The summary's model_parameters, in the seed's names."""
    return {"model_name": model.name, "input_dim": vocab_size, "embedding_dim": text.embedding_dim,
            "hidden_dim": text.hidden_dim, "output_dim": num_classes,
            "number_of_layers": text.number_of_layers, "bidirectional": text.bidirectional,
            "dropout": model.dropout, "pad_index": PAD_INDEX}
