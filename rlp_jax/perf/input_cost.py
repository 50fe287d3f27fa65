"""What one host CPU core feeds: the input pipeline against the bare decode (docs/design.md §5).

Data made here, without a download, so that the project's real pipeline reads it:
``write_jpeg_imagenet``, a prepared tfds ``imagenet2012`` whose images are real JPEGs of ImageNet's sizes
(most 500x375 or 375x500, the rest spread from 200 to 1000 pixels a side) with smooth, photo-like content
(JPEG decode time depends on both); ``write_cifar100``, a prepared ``cifar100`` (32x32 PNGs).
``per_core`` then measures, in one process pinned to one core, for each transform a run uses:

- the pipeline as a run reads it (``input_pipeline.train_batches`` / ``eval_batches``: read, decode,
  crop, flip, normalize, batch, random labels attached), images/s;
- the ceiling on the same records: a minimal tf.data loop that does only the work the transform must
  (``decode_and_crop_jpeg`` of a random box + resize for the Inception crop; ``decode_jpeg`` + the shorter
  side to ``eval_resize``, antialiased, + the central crop for the eval and ``:flip_only`` transforms;
  tfds's own decode for fixed-size images);

and their ratio, on each copy of the data it is given (e.g. the full-size JPEGs and their one-time resized
copy, data/resized_copy.py). One core, so that the figure multiplies by a host's cores (perf/plan.py).
"""

from __future__ import annotations

import os
import time

import numpy as np

from rlp_jax.data import input_pipeline, preprocess, resized_copy, tfds_source
from rlp_jax.infra.errors import UserError

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


def write_cifar100(data_dir: str, *, num_train: int, num_test: int, seed: int = 0) -> str:
  """A prepared tfds ``cifar100`` in ``data_dir`` (32x32 PNGs, as tfds stores them); returns data_dir."""
  rng = np.random.default_rng(seed)

  def example(features, split, k):
    del features
    return {
      "image": _photo_like(rng, 32, 32),
      "label": int(rng.integers(0, 100)),
      "coarse_label": int(rng.integers(0, 20)),
      "id": f"{split}_{k:05d}",
    }

  return tfds_source.write_prepared(data_dir, "cifar100", {"train": [num_train], "test": [num_test]}, example)


def _images_per_s(start, num_batches: int, *, from_start: bool) -> float:
  """Images/s over the first ``num_batches`` + 1 batches of ``start()``'s iterator of (images, ...) batches.

  JPEGs (``from_start`` False) are timed after the first batch, because each epoch starts its tf.data
  pipeline afresh (files opened, shuffle buffer filled with encoded images): on a dataset of a few hundred
  images that start-up would halve the rate, at ImageNet's size it vanishes. Fixed-size images are decoded
  as they are read, before the shuffle buffer, so filling the buffer is the decode: timed from the start.
  """
  t0 = time.perf_counter()
  it = start()
  n = len(next(it)[0])
  if not from_start:
    t0, n = time.perf_counter(), 0
  for _ in range(num_batches):
    n += len(next(it)[0])
  return n / (time.perf_counter() - t0)


def _ceiling(config, data_dir: str, split: str, batch: int, num_batches: int, work: str) -> float:
  """Images/s of the transform's necessary work alone on the same records (the least it can cost).

  ``work``: 'inception' (a random box decoded alone by ``decode_and_crop_jpeg``, resized), 'resize' (the
  whole JPEG decoded, shorter side to ``eval_resize`` by the pipeline's own resize, central crop) or
  'decoded' (fixed-size images, which tfds decodes as it reads: that decode is all there is).
  """
  import tensorflow as tf
  import tensorflow_datasets as tfds

  size = config.augment.image_size
  resize = config.augment.eval_resize or size
  builder = tfds.builder(config.dataset, data_dir=data_dir)

  def decode(example):
    data = example["image"]
    if work == "decoded":
      return data
    if work == "inception":
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
    return preprocess.resize_and_center_crop(tf.io.decode_jpeg(data, channels=3), size, resize)

  decoders = None if work == "decoded" else {"image": tfds.decode.SkipDecoding()}
  ds = builder.as_dataset(split=split, decoders=decoders).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.repeat().batch(batch).prefetch(2)
  return _images_per_s(lambda: ((b,) for b in ds), num_batches, from_start=work == "decoded")


def _pipeline(config, num_batches: int, *, train: bool, from_start: bool) -> float:
  """Images/s of the run's own batches (``_images_per_s``), of an epoch or of the eval split."""
  info = input_pipeline.get_info(config)

  def start():
    if train:
      batches = input_pipeline.train_batches(config, info, 0)
    else:
      batches = input_pipeline.eval_batches(config, info, "test", 0)
    return ((b["index"],) for b in batches)

  return _images_per_s(start, num_batches, from_start=from_start)


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


def _transforms(config) -> list[tuple[str, object, str]]:
  """(name, config, ceiling work) of each transform a run of ``config``'s dataset uses, train ones first."""
  aug = config.augment
  flip = ", flip" if aug.flip else ""
  if not tfds_source.source(config).jpeg:  # fixed-size images, decoded by tfds as it reads
    return [(f"train ({aug.crop} crop{flip})", config, "decoded"), ("eval", None, "decoded")]
  inception = config.copy_and_resolve_references()
  inception.augment.crop = "inception"
  resize = config.copy_and_resolve_references()
  resize.augment.crop = "none"  # the :flip_only path: the eval transform (+ flip)
  return [
    (f"train (Inception crop{flip})", inception, "inception"),
    (f"train (resize + central crop{flip})", resize, "resize"),
    ("eval", None, "resize"),
  ]


def _measure(config, data_dirs: dict[str, str], num_batches: int) -> list[dict]:
  rows = []
  for data, data_dir in data_dirs.items():
    config = config.copy_and_resolve_references()
    config.data_dir = data_dir
    for name, train_config, work in _transforms(config):
      train = train_config is not None
      run = train_config if train else config
      n = min(num_batches, batches_in_one_pass(run, train=train))
      if n < 1:
        raise ValueError(
          f"too few images for one timed {name} batch: write more (benchmark --input_per_core)"
        )
      from_start = work == "decoded"
      ours = _pipeline(run, n, train=train, from_start=from_start)
      split = "train" if train else tfds_source.test_split(run, tfds_source.source(run))
      batch = run.batch_size if train else run.eval.batch_size
      ceiling = _ceiling(run, data_dir, split, batch, n, work)
      first = next((r for r in rows if r["transform"] == name), None)  # the first copy's same transform
      rows.append(
        {
          "transform": name,
          "data": data,
          "batches": n + from_start,  # the batches timed
          "images_per_s": ours,
          "ceiling": ceiling,
          "ratio": ours / ceiling,
          "vs_first_data": ours / first["images_per_s"] if first else 1.0,
        }
      )
  return rows


def write_data(config, root: str, num_train: int) -> dict[str, str]:
  """Data shaped like ``config.dataset``'s under ``root``: {name of the copy: its tfds data_dir}.

  imagenet2012: the full-size JPEGs and their copy resized once to the eval resize (data/resized_copy.py);
  cifar100: the PNGs. Both splits get ``num_train`` images.
  """
  full = os.path.join(root, "full")
  if config.dataset == "cifar100":
    return {"cifar100": write_cifar100(full, num_train=num_train, num_test=num_train)}
  if config.dataset != "imagenet2012":
    raise UserError(
      f"config.dataset={config.dataset!r}: --input_per_core makes imagenet2012 or cifar100 data; use "
      "configs/vit_imagenet.py or configs/wrn_cifar100.py (--input_batches measures any dataset)."
    )
  write_jpeg_imagenet(full, num_train=num_train, num_validation=num_train)
  side = config.augment.eval_resize or config.augment.image_size
  resized = os.path.join(root, f"resized{side}")
  resized_copy.write(config.dataset, full, resized, shorter_side=side)
  return {"full size": full, f"resized {side}": resized}


def per_core(config, data_dirs: dict[str, str], *, num_batches: int = 20, core: int = 0) -> list[dict]:
  """The table: per data copy and transform, the pipeline's and the ceiling's images/s on one core.

  ``data_dirs``: a name for each copy of the data (e.g. 'full size', 'resized 256') -> its tfds data_dir.
  Everything is measured in one child process pinned to ``core`` from its start, so the rows compare.
  """
  import multiprocessing
  from concurrent.futures import ProcessPoolExecutor

  ctx = multiprocessing.get_context("spawn")
  with ProcessPoolExecutor(1, mp_context=ctx, initializer=_pin, initargs=(core,)) as pool:
    return pool.submit(_measure, config, data_dirs, num_batches).result()
