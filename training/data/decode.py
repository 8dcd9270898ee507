"""Decoding an image example: the crop window (random for training, central for evaluation) and
a JPEG decoded at the smallest DCT scale that still covers the training size."""
from __future__ import annotations

from core.config import DataConfig
from training.keras_compat import tf

DCT_RATIOS = (1, 2, 4, 8)


def crop_window(shape, data: DataConfig, training: bool, seed):
    """[offset_y, offset_x, height, width] of the crop, for an image of `shape` [h, w, c]."""
    if training:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=seed,
            min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(data.min_crop_area, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
        return tf.concat([begin[:2], size[:2]], axis=0)
    # A centred square: the shorter side times val_crop_fraction, so eval keeps the aspect ratio.
    side = tf.cast(data.val_crop_fraction * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32), tf.int32)
    side = tf.maximum(side, 1)
    return tf.stack([(shape[0] - side) // 2, (shape[1] - side) // 2, side, side])


def _dct_ratio_index(window, size: int):
    """Index into DCT_RATIOS of the largest ratio leaving the window's shorter side >= size."""
    side = tf.minimum(window[2], window[3])
    return tf.reduce_sum(tf.cast(side >= size * tf.constant(DCT_RATIOS[1:]), tf.int32))


def dct_window(window, size: int):
    """(index into DCT_RATIOS, the window in that ratio's decoded pixels).

    The window's edges are rounded to the ratio's grid: a scaled pixel is one ratio x ratio
    block, so the scaled window shows the original window moved by less than ratio / 2 pixels,
    not a window shifted by up to a whole block.
    """
    index = _dct_ratio_index(window, size)
    ratio = tf.gather(tf.constant(DCT_RATIOS), index)
    begin = (window[:2] + ratio // 2) // ratio
    end = (window[:2] + window[2:] + ratio // 2) // ratio
    return index, tf.concat([begin, tf.maximum(end - begin, 1)], 0)


def decode_jpeg_window(encoded, window, size: int, dct_scaling: bool = True):
    """The crop window of a JPEG, decoded; at reduced DCT scale when it is >= 2x `size`.

    Only the window is decoded (`decode_and_crop_jpeg`): rows below it are never read and
    blocks beside it are never transformed. A scaled decode takes the window in scaled pixels
    (`dct_window`) and returns 1/ratio of the pixels of the same part of the image.
    """
    if not dct_scaling:
        return tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
    index, scaled = dct_window(window, size)
    return tf.switch_case(index, [
        lambda r=r: tf.io.decode_and_crop_jpeg(encoded, scaled, channels=3, ratio=r) for r in DCT_RATIOS])


def decode_crop_resize(encoded, data: DataConfig, training: bool, seed, dct_scaling: bool = True):
    """One image: decoded, cropped (random-resized when training, centred otherwise), resized.

    Returns uint8 [S, S, 3]: the bilinear resize rounded to the nearest level (at most half a
    level from the float resize; the model casts and normalises).
    """
    size = data.image_size

    def jpeg():
        window = crop_window(tf.io.extract_jpeg_shape(encoded), data, training, seed)
        return decode_jpeg_window(encoded, window, size, dct_scaling)

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        window = crop_window(tf.shape(image), data, training, seed)
        return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    resized = tf.image.resize(image, [size, size], method="bilinear")
    # A bilinear resize of uint8 pixels stays within 0..255: no clipping pass needed.
    return tf.ensure_shape(tf.cast(tf.round(resized), tf.uint8), [size, size, 3])
