"""Per-example preprocessing: decode, crop or resize, flip, normalize — train and eval.

**Preprocessing** (``config.augment``; train and eval identical unless said otherwise):

- decode: fixed-size images (CIFAR) are decoded by tfds before shuffling; variable-size images (ImageNet)
  stay encoded through the shuffle buffer and are decoded after it.
- eval (and train with ``crop='none'``): if the model input differs from the stored image (``image_size``
  set, or variable-size images), resize the shorter side to ``eval_resize`` (0 = ``image_size``) with
  antialiased bilinear interpolation, then take the central ``image_size`` x ``image_size`` crop. With
  ``eval_resize=256`` and ``image_size=224`` this is the standard ImageNet eval (big_vision
  ``resize_small(256)|central_crop(224)``). Fixed-size images at their own size are used as stored.
- train ``crop='inception'``: the Inception random-resized crop (big_vision
  ``decode_jpeg_and_inception_crop``): a box covering 5-100% of the image area with aspect ratio in
  [3/4, 4/3] (``tf.image.stateless_sample_distorted_bounding_box``, whole image as fallback), JPEGs decoded
  only inside the box (``decode_and_crop_jpeg``), resized (bilinear) to ``image_size``.
- train ``flip``: random horizontal flip with probability 1/2.
- normalize: pixels / 255, then ``unit`` (keep [0, 1]), ``symmetric`` ([-1, 1], big_vision's ViT
  ``value_range(-1, 1)``), or per-channel ``(x - mean) / std`` with the ``cifar100`` or ``imagenet``
  statistics (``NORMALIZATION``). Non-uint8 (already numeric) features are only cast to float32 and
  normalized.

Every random draw is a stateless TF op keyed by ``(hash(seed, epoch), index)``, never by read order.
"""

from __future__ import annotations

import numpy as np
from etils import epy

from rlp_jax.data import labels
from rlp_jax.data.tfds_source import Source
from rlp_jax.infra import streams
from rlp_jax.infra.errors import UserError

with epy.lazy_imports():
  import tensorflow as tf

# (mean, std) per channel, applied to pixels scaled to [0, 1].
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
  "unit": ((0.0,), (1.0,)),
  "symmetric": ((0.5,), (0.5,)),
  "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
CROPS = ("none", "inception")


def check_augment(config, image_shape: tuple) -> tuple[int, ...]:
  """Validates ``config.augment`` against the stored images; returns the model's input shape."""
  aug = config.augment
  if aug.crop not in CROPS:
    raise UserError(f"config.augment.crop must be one of {CROPS}, got {aug.crop!r}.")
  if aug.normalize not in NORMALIZATION:
    raise UserError(f"config.augment.normalize must be one of {list(NORMALIZATION)}, got {aug.normalize!r}.")
  if aug.image_size < 0 or aug.eval_resize < 0:
    raise UserError("config.augment.image_size and config.augment.eval_resize must be >= 0.")
  is_image = len(image_shape) == 3
  if not is_image and (aug.image_size or aug.flip or aug.crop != "none"):
    raise UserError(
      f"config.augment: the inputs of config.dataset={config.dataset!r} have shape {image_shape}, not "
      "(H, W, C) images; set augment.image_size=0, augment.flip=False and augment.crop='none'."
    )
  if aug.image_size:
    shape = (aug.image_size, aug.image_size, image_shape[-1] or 3)
  elif None in image_shape:
    raise UserError(
      f"config.augment.image_size: the images of config.dataset={config.dataset!r} vary in size "
      f"{image_shape}; set the model's input side, e.g. --config.augment.image_size=224."
    )
  else:
    shape = tuple(image_shape)
  mean, _ = NORMALIZATION[aug.normalize]
  if len(mean) > 1 and len(mean) != shape[-1]:
    raise UserError(
      f"config.augment.normalize={aug.normalize!r} has {len(mean)}-channel statistics but the images have "
      f"{shape[-1]} channels; use 'unit' or 'symmetric'."
    )
  return shape


def _decode_image(data: tf.Tensor, channels: int) -> tf.Tensor:
  image = tf.io.decode_image(data, channels=channels, expand_animations=False)
  image.set_shape([None, None, channels])
  return image


def shorter_side_to(image: tf.Tensor, resize: int, min_side: int = 0) -> tf.Tensor:
  """float32 image whose shorter side is ``resize`` (antialiased bilinear), neither side under ``min_side``.

  An image already at that size is returned as it is: the resize would be the identity, and skipping it is
  most of the eval transform's work on a copy resized once (data/resized_copy.py, docs/design.md §5).
  """
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = resize / tf.minimum(h, w)
  new_h = tf.maximum(min_side, tf.cast(tf.round(h * scale), tf.int32))
  new_w = tf.maximum(min_side, tf.cast(tf.round(w * scale), tf.int32))
  same = tf.logical_and(tf.equal(new_h, shape[0]), tf.equal(new_w, shape[1]))
  return tf.cond(
    same,
    lambda: tf.cast(image, tf.float32),
    lambda: tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True),
  )


def resize_and_center_crop(image: tf.Tensor, size: int, resize: int) -> tf.Tensor:
  """Shorter side -> ``resize`` (antialiased bilinear), then the central ``size`` x ``size`` crop."""
  image = shorter_side_to(image, resize, size)
  shape = tf.shape(image)
  top, left = (shape[0] - size) // 2, (shape[1] - size) // 2
  return tf.slice(image, [top, left, 0], [size, size, -1])


def _inception_crop(image: tf.Tensor, size: int, seed: tf.Tensor, src: Source) -> tf.Tensor:
  """Random-resized crop: 5-100% of the area, aspect ratio in [3/4, 4/3], resized to ``size``."""
  if src.jpeg:
    shape = tf.image.extract_jpeg_shape(image)
  else:
    image = _decode_image(image, src.channels) if src.encoded else image
    shape = tf.shape(image)
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
    shape,
    bounding_boxes=tf.zeros([0, 0, 4], tf.float32),
    seed=seed,
    min_object_covered=0.0,
    aspect_ratio_range=(3 / 4, 4 / 3),
    area_range=(0.05, 1.0),
    use_image_if_no_bounding_boxes=True,
  )
  if src.jpeg:
    window = tf.stack([begin[0], begin[1], crop[0], crop[1]])
    image = tf.image.decode_and_crop_jpeg(image, window, channels=src.channels)
  else:
    image = tf.slice(image, begin, crop)
  return tf.image.resize(image, [size, size], method="bilinear")


def preprocessor(config, input_shape: tuple, src: Source, *, train: bool, epoch: int = 0):
  """The per-example map: {image (encoded or decoded), label, index} -> model-ready float32 image."""
  aug = config.augment
  shape = tuple(input_shape)
  mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION[aug.normalize])
  is_image = len(shape) == 3
  size = shape[0] if is_image else 0
  stored = tuple(src.builder.info.features["image"].shape)
  resize = src.encoded or (is_image and tuple(stored[:2]) != tuple(shape[:2]))
  crop = train and aug.crop == "inception"
  aug_seed = int(labels.hash32(config.seed, epoch, streams.AUGMENT))

  def fn(ex):
    image = ex["image"]
    seed = tf.stack([tf.constant(aug_seed, tf.int64), ex["index"]])
    if crop:
      image = _inception_crop(image, size, tf.random.experimental.stateless_fold_in(seed, 0), src)
    else:
      if src.encoded:
        image = _decode_image(image, src.channels)
      if resize:
        image = resize_and_center_crop(image, size, aug.eval_resize or size)
    scale = 255.0 if ex["image"].dtype == tf.uint8 or src.encoded else 1.0
    image = tf.cast(image, tf.float32) / scale
    if train and aug.flip:
      image = tf.image.stateless_random_flip_left_right(
        image, tf.random.experimental.stateless_fold_in(seed, 1)
      )
    image = (image - mean) / std
    image = tf.ensure_shape(image, shape)
    return {"image": image, "label": ex["label"], "index": ex["index"]}

  return fn
