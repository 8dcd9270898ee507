"""Model registry: Keras Applications bases plus a small CNN, with augmentation, input
preprocessing and the classification head inside the model.

Every model takes RGB images in 0..255 at the configured size, uint8 (what the input pipeline
emits) or float32: the cast to float (Keras casts inputs to the float32 `image` input), the
augmentation and the per-architecture normalisation run inside the model, on the accelerator,
and travel with saved HDF5 files, so a checkpoint can be evaluated without knowing how it was
trained.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from core.config import AugmentConfig, ModelConfig
from training.keras_compat import keras, tf

APPLICATIONS: dict[str, Callable[..., keras.Model]] = {
    "vgg16": keras.applications.VGG16,
    "vgg19": keras.applications.VGG19,
    "resnet50": keras.applications.ResNet50,
    "resnet101": keras.applications.ResNet101,
    "mobilenetv2": keras.applications.MobileNetV2,
    "efficientnetb0": keras.applications.EfficientNetB0,
}


class ModelError(ValueError):
    """A model setting that cannot be honoured; one line saying what to do."""


@keras.utils.register_keras_serializable(package="training")
class Preprocess(keras.layers.Layer):
    """RGB 0..255 in; channel order, mean subtraction and scaling the base network expects."""

    def __init__(self, channel_order: str = "rgb", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **kwargs):
        super().__init__(**kwargs)
        self.channel_order = channel_order
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def call(self, images):
        images = tf.cast(images, self.compute_dtype)
        if self.channel_order == "bgr":
            images = images[..., ::-1]
        mean = tf.constant(self.mean, self.compute_dtype)
        std = tf.constant(self.std, self.compute_dtype)
        return (images - mean) / std

    def get_config(self):
        return {**super().get_config(), "channel_order": self.channel_order, "mean": self.mean,
                "std": self.std}


@keras.utils.register_keras_serializable(package="training")
class RandomSaturation(keras.layers.Layer):
    """Random colour saturation change on 0..255 RGB images, training only."""

    def __init__(self, factor: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.factor = float(factor)
        self.seed = seed

    def call(self, images, training=None):
        if not training or self.factor <= 0:
            return images
        batch = tf.shape(images)[0]
        scale = tf.random.uniform([batch, 1, 1, 1], 1.0 - self.factor, 1.0 + self.factor, seed=self.seed)
        grey = tf.reduce_mean(images, axis=-1, keepdims=True)
        return tf.clip_by_value(grey + (images - grey) * tf.cast(scale, images.dtype), 0.0, 255.0)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor, "seed": self.seed}


def augmentation(aug: AugmentConfig, seed: int) -> list[keras.layers.Layer]:
    """Keras preprocessing layers; each is an identity at inference time."""
    layers = []
    if aug.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if aug.rotation > 0:
        layers.append(keras.layers.RandomRotation(aug.rotation, seed=seed))
    if aug.zoom > 0:
        # Independent height and width factors: zoom plus crop-and-stretch.
        layers.append(keras.layers.RandomZoom((-aug.zoom, aug.zoom), (-aug.zoom, aug.zoom), seed=seed))
    if aug.translation > 0:
        layers.append(keras.layers.RandomTranslation(aug.translation, aug.translation, seed=seed))
    if aug.brightness > 0:
        layers.append(keras.layers.RandomBrightness(aug.brightness, value_range=(0, 255), seed=seed))
    if aug.contrast > 0:
        layers.append(keras.layers.RandomContrast(aug.contrast, seed=seed))
    if aug.saturation > 0:
        layers.append(RandomSaturation(aug.saturation, seed=seed))
    return layers


def small_cnn(input_shape: tuple[int, int, int]) -> keras.Model:
    """Three conv blocks; enough for the demo digits on CPU in seconds."""
    inputs = keras.Input(input_shape)
    x = inputs
    for filters in (32, 64, 128):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        # Fast-moving statistics: the demo trains for only a few hundred steps.
        x = keras.layers.BatchNormalization(momentum=0.9)(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="small_cnn")


def _small_cnn(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    if cfg.weights:
        raise ModelError("model.weights must be null for small_cnn: it has no pretrained weights")
    return small_cnn(input_shape)


def _application(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    weights = cfg.weights
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise ModelError(f"model.weights file {weights} does not exist; give an existing .h5 path, "
                         "imagenet, or null")
    try:
        return APPLICATIONS[cfg.name](include_top=False, weights=weights, input_shape=input_shape,
                                      pooling="avg")
    except Exception as err:  # noqa: BLE001 - a failed download surfaces as several error types
        if weights != "imagenet":
            raise
        cache = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser() / "models"
        raise ModelError(
            f"could not fetch imagenet weights for {cfg.name} ({type(err).__name__}); on a node without "
            f"internet, download the '{cfg.name}' notop .h5 elsewhere and put it in {cache}/ "
            "or set model.weights to its path") from None


# core/registry.py TASKS["image"].models -> base network builder.
IMAGE_BUILDERS = {**{name: _application for name in APPLICATIONS}, "small_cnn": _small_cnn}
MODEL_NAMES = tuple(IMAGE_BUILDERS)


def _base(cfg: ModelConfig, input_shape: tuple[int, int, int]) -> keras.Model:
    if cfg.name not in IMAGE_BUILDERS:
        raise ModelError(f"model.name {cfg.name!r} is not one of {', '.join(MODEL_NAMES)}")
    return IMAGE_BUILDERS[cfg.name](cfg, input_shape)


def build_model(cfg: ModelConfig, aug: AugmentConfig, image_size: int, num_classes: int,
                seed: int = 0) -> keras.Model:
    """Builds the full classifier: augmentation -> preprocessing -> base -> head -> softmax.

    Args:
        cfg: model section of the config.
        aug: augmentation section.
        image_size: square input side in pixels.
        num_classes: classifier width, taken from the data.
        seed: seed for the augmentation layers (callers pass seed + rank).
    """
    input_shape = (image_size, image_size, 3)
    # float32, not uint8: uint8 batches are cast exactly, float images from older callers are not
    # truncated, and the cast runs in the model's step, on the replica's device.
    inputs = keras.Input(input_shape, name="image")
    x = inputs
    for layer in augmentation(aug, seed):
        x = layer(x)
    x = Preprocess(cfg.channel_order, cfg.mean, cfg.std, name="preprocess")(x)
    base = _base(cfg, input_shape)
    if cfg.trainable_layers >= 0:
        frozen = len(base.layers) - cfg.trainable_layers
        for layer in base.layers[:frozen]:
            layer.trainable = False
    x = base(x)
    for units in cfg.head_units:
        if cfg.dropout > 0:
            x = keras.layers.Dropout(cfg.dropout)(x)
        x = keras.layers.Dense(units, activation="relu")(x)
    if cfg.dropout > 0:
        x = keras.layers.Dropout(cfg.dropout)(x)
    # float32 softmax keeps the loss stable under mixed precision.
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classes")(x)
    return keras.Model(inputs, outputs, name=cfg.name)


def custom_objects() -> dict:
    """Project layers and schedules needed to load a saved HDF5 model."""
    from training.optim import WarmupDecay  # defers TensorFlow

    return {"Preprocess": Preprocess, "RandomSaturation": RandomSaturation, "WarmupDecay": WarmupDecay}
