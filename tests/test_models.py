"""Model registry: what a user configures is what gets built."""
import numpy as np
import pytest

from core.config import AugmentConfig, ModelConfig
from training.keras_compat import keras
from training.models import MODEL_NAMES, ModelError, Preprocess, build_model


def test_caffe_preprocessing_swaps_to_bgr_and_subtracts_the_mean():
    mean = [103.939, 116.779, 123.68]
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], dtype="float32")  # R, G, B
    out = Preprocess("bgr", mean, [1.0, 1.0, 1.0])(pixel).numpy()[0, 0, 0]
    assert out == pytest.approx([30 - mean[0], 20 - mean[1], 10 - mean[2]])


def test_head_width_comes_from_the_data_and_top_n_freezes_the_rest():
    cfg = ModelConfig(name="mobilenetv2", weights=None, head_units=[32], trainable_layers=5)
    model = build_model(cfg, AugmentConfig(flip=True, rotation=0.1, contrast=0.1, saturation=0.2), 64, 7)
    assert model.output_shape == (None, 7)
    base = model.get_layer(next(layer.name for layer in model.layers if layer.name.startswith("mobilenetv2")))
    trainable = [layer for layer in base.layers if layer.trainable]
    assert trainable == base.layers[-5:]


def test_augmentation_is_active_only_in_training():
    cfg = ModelConfig(name="small_cnn", channel_order="rgb", mean=[0, 0, 0], head_units=[])
    model = build_model(cfg, AugmentConfig(flip=True, brightness=0.3, saturation=0.5), 16, 3, seed=1)
    images = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    assert np.allclose(model(images, training=False), model(images, training=False))
    assert not np.allclose(model(images, training=True), model(images, training=True))


def test_imagenet_weights_that_cannot_be_fetched_say_where_to_put_them(monkeypatch):
    from tf_keras.src.utils import data_utils

    def offline(*args, **kwargs):
        raise OSError("no route to host")  # what a compute node without internet sees

    monkeypatch.setattr(data_utils, "get_file", offline)
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig(name="vgg19", weights="imagenet"), AugmentConfig(flip=False), 32, 10)
    message = str(err.value)
    assert "\n" not in message
    assert ".keras/models" in message and "model.weights" in message


def test_unknown_model_and_missing_weights_file_are_clear(tmp_path):
    with pytest.raises(ModelError, match="not one of"):
        build_model(ModelConfig(name="vgg20"), AugmentConfig(), 32, 10)
    with pytest.raises(ModelError, match="does not exist"):
        build_model(ModelConfig(name="vgg16", weights=str(tmp_path / "none.h5")), AugmentConfig(), 32, 10)


def test_registry_has_the_promised_architectures():
    assert {"vgg16", "vgg19", "resnet50", "resnet101", "mobilenetv2", "efficientnetb0",
            "small_cnn"} <= set(MODEL_NAMES)
    assert keras.__name__.startswith("tf_keras")


def test_uint8_batches_give_the_same_predictions_as_float32():
    """The pipeline emits uint8; the model casts it exactly, so nothing a user sees changes."""
    cfg = ModelConfig(name="small_cnn", channel_order="bgr", mean=[103.939, 116.779, 123.68], head_units=[8])
    model = build_model(cfg, AugmentConfig(flip=True, saturation=0.2), 16, 3, seed=1)
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    as_uint8 = model(images, training=False).numpy()
    assert np.array_equal(as_uint8, model(images.astype("float32"), training=False).numpy())
    normalised = keras.Model(model.input, model.get_layer("preprocess").output)(images, training=False).numpy()
    assert normalised.dtype == np.float32
    expected = images[..., 2].astype(np.float32) - np.float32(103.939)
    assert np.allclose(normalised[..., 0], expected, atol=1e-4)
