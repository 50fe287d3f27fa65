"""What one host CPU core feeds: the input pipeline against the bare JPEG decode (docs/design.md §5).

``write_jpeg_imagenet`` makes ImageNet-shaped data here, without a download: a prepared tfds
``imagenet2012`` whose images are real JPEGs of ImageNet's sizes (most 500x375 or 375x500, the rest spread
from 200 to 1000 pixels a side) with smooth, photo-like content (JPEG decode time depends on both), so the
project's real pipeline reads them. ``per_core`` then measures, in one process pinned to one core:

- the pipeline as a run reads it (``input_pipeline.train_batches`` / ``eval_batches``: read, decode,
  crop, flip, normalize, batch, random labels attached), images/s;
- the ceiling on the same records: a minimal tf.data loop that does only the work the transform must
  (``decode_and_crop_jpeg`` of a random box + resize for the Inception crop; ``decode_jpeg`` + the shorter
  side to ``eval_resize``, antialiased, + the central crop for the eval transform);

and their ratio. One core, so that the figure multiplies by a host's cores (plan --input_rate_per_core).
"""

from __future__ import annotations

import os
import time

import numpy as np

from rlp_jax.data import input_pipeline, preprocess, tfds_source

# ImageNet train images: about 60% are 500x375, 15% 375x500, 10% 500x333; the rest vary (200-1000 px).
_SIZES = (((375, 500), 0.60), ((500, 375), 0.15), ((333, 500), 0.10))


def _size(rng) -> tuple[int, int]:
  u, acc = rng.random(), 0.0
  for (h, w), p in _SIZES:
    acc += p
    if u < acc:
      return h, w
  side = int(rng.integers(200, 1001))
  aspect = float(rng.uniform(0.6, 1.7))
  return max(64, int(side / aspect)), side


def _photo_like(rng, h: int, w: int) -> np.ndarray:
  """Smooth colour fields with mild noise: compresses and decodes like a photograph, unlike pure noise."""
  small = rng.integers(0, 256, (h // 32 + 2, w // 32 + 2, 3)).astype(np.float32)
  ys, xs = np.linspace(0, small.shape[0] - 1.001, h), np.linspace(0, small.shape[1] - 1.001, w)
  y0, x0 = ys.astype(int), xs.astype(int)
  fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  top = small[y0][:, x0] * (1 - fx) + small[y0][:, x0 + 1] * fx
  bottom = small[y0 + 1][:, x0] * (1 - fx) + small[y0 + 1][:, x0 + 1] * fx
  image = top * (1 - fy) + bottom * fy + rng.normal(0, 6, (h, w, 3))
  return np.clip(image, 0, 255).astype(np.uint8)


def write_jpeg_imagenet(data_dir: str, *, num_train: int, num_validation: int, seed: int = 0) -> str:
  """A prepared tfds ``imagenet2012`` in ``data_dir`` (train and validation splits); returns data_dir."""
  rng = np.random.default_rng(seed)

  def example(features, split, k):
    del features
    image = _photo_like(rng, *_size(rng))
    return {"image": image, "label": int(rng.integers(0, 1000)), "file_name": f"{split}_{k:06d}.JPEG"}

  shards = {"train": [num_train], "validation": [num_validation]}
  return tfds_source.write_prepared(data_dir, "imagenet2012", shards, example)


def _ceiling(
  data_dir: str, split: str, size: int, resize: int, batch: int, num_batches: int, *, train: bool
) -> float:
  """Images/s of decode + resize alone on the same records (the least any transform of them costs)."""
  import tensorflow as tf
  import tensorflow_datasets as tfds

  ds = tfds.builder("imagenet2012", data_dir=data_dir).as_dataset(
    split=split, decoders={"image": tfds.decode.SkipDecoding()}
  )

  def decode(example):
    data = example["image"]
    if train:  # the Inception crop's work: a random box decoded alone, resized
      shape = tf.image.extract_jpeg_shape(data)
      begin, crop, _ = tf.image.sample_distorted_bounding_box(
        shape,
        tf.zeros((0, 0, 4)),
        area_range=(0.05, 1.0),
        aspect_ratio_range=(0.75, 1.33),
        use_image_if_no_bounding_boxes=True,
      )
      image = tf.image.decode_and_crop_jpeg(data, tf.stack([begin[0], begin[1], crop[0], crop[1]]), 3)
      return tf.image.resize(image, (size, size))
    # The eval transform's work: decode, then the pipeline's own resize and central crop.
    return preprocess.resize_and_center_crop(tf.io.decode_jpeg(data, channels=3), size, resize)

  ds = ds.repeat().map(decode, num_parallel_calls=tf.data.AUTOTUNE).batch(batch).prefetch(2)
  it = iter(ds)
  next(it)
  t0 = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  return num_batches * batch / (time.perf_counter() - t0)


def _pipeline(config, num_batches: int, *, train: bool) -> float:
  """Images/s of the run's own batches, within one epoch (or one pass over the eval split).

  Within one, because each epoch starts its tf.data pipeline afresh (files opened, shuffle buffer filled):
  on a dataset of a few hundred images that start-up would halve the rate, at ImageNet's size it vanishes.
  """
  info = input_pipeline.get_info(config)
  if train:
    it = input_pipeline.train_batches(config, info, 0)
  else:
    it = input_pipeline.eval_batches(config, info, "test", 0)
  next(it)  # start-up (file open, buffers) is not throughput
  t0, n = time.perf_counter(), 0
  for _ in range(num_batches):
    n += len(next(it)["index"])
  return n / (time.perf_counter() - t0)


def batches_in_one_pass(config, *, train: bool) -> int:
  """How many batches one epoch (train) or one pass over the eval split holds, after the first."""
  info = input_pipeline.get_info(config)
  if train:
    return input_pipeline.steps_per_epoch(config, info) - 1
  return info.num_test // config.eval.batch_size - 1  # whole batches only: the padded last one is not


def _pin(core: int) -> None:
  # First thing in a fresh process, before TensorFlow starts its thread pools: every thread it creates
  # inherits this one core (pinning a process whose pools already run would pin only the calling thread).
  os.sched_setaffinity(0, {core})


def _measure(config, data_dir: str, num_batches: int) -> list[dict]:
  config = config.copy_and_resolve_references()
  config.data_dir = data_dir
  size = config.augment.image_size
  resize = config.augment.eval_resize or size
  rows = []
  flip = ", flip" if config.augment.flip else ""
  for name, train in ((f"train ({config.augment.crop} crop{flip})", True), ("eval", False)):
    n = min(num_batches, batches_in_one_pass(config, train=train))
    if n < 1:
      raise ValueError(f"too few images for one timed {name} batch: write more (benchmark --input_jpeg)")
    ours = _pipeline(config, n, train=train)
    split = "train" if train else "validation"
    batch = config.batch_size if train else config.eval.batch_size
    # The ceiling does the transform's own work: a random box for the Inception crop, else (eval, and train
    # with crop='none', the :flip_only path) the whole image resized and centrally cropped.
    inception = train and config.augment.crop == "inception"
    ceiling = _ceiling(data_dir, split, size, resize, batch, n, train=inception)
    rows.append(
      {"transform": name, "batches": n, "images_per_s": ours, "ceiling": ceiling, "ratio": ours / ceiling}
    )
  return rows


def per_core(config, data_dir: str, *, num_batches: int = 20, core: int = 0) -> list[dict]:
  """The table: per transform, the pipeline's and the ceiling's images/s on one core, and their ratio.

  Measured in a child process pinned to ``core`` from its start, both in the same process.
  """
  import multiprocessing
  from concurrent.futures import ProcessPoolExecutor

  ctx = multiprocessing.get_context("spawn")
  with ProcessPoolExecutor(1, mp_context=ctx, initializer=_pin, initargs=(core,)) as pool:
    return pool.submit(_measure, config, data_dir, num_batches).result()
