"""A one-time copy of a prepared tfds dataset with its JPEGs resized to a shorter side (docs/design.md §5).

Decoding is what a host's cores spend their time on, and an ImageNet image (median 500x375) is decoded and
resized on every epoch only for the eval resize (shorter side 256) to shrink it again. Resized once, the
eval transform (and the ``:flip_only`` train transform) skips its resize (preprocess.shorter_side_to), and
every decode reads fewer pixels. The copy keeps everything the run's identity rests on:

- the same shard files, in the same order, with the same number of records each: an example's index (its
  position, tfds_source.py) is the same, so are its random labels, noise and fraction membership;
- every feature but ``image`` byte for byte; images whose shorter side is already at most ``shorter_side``
  are not re-encoded at all;
- the resize is the pipeline's own (antialiased bilinear, rounded to uint8), so the eval transform on the
  copy differs from the original's only by the JPEG re-encoding (quality ``quality``), measured in the test.

The Inception crop's box is then drawn on the smaller image, so train crops are not the original's (small
crops are upsampled from fewer pixels): a documented change of the data, not an exact equivalence.

Each shard is written under a temporary name and renamed when whole, so an interrupted copy resumes at the
first unfinished shard; the first thing written is ``resized_copy.json``, which says what the copy is, and
the last the dataset's metadata, without which tfds sees no prepared dataset there.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor

from etils import epy

from rlp_jax.data import preprocess
from rlp_jax.infra.errors import UserError

with epy.lazy_imports():
  import tensorflow as tf
  import tensorflow_datasets as tfds

MARKER = "resized_copy.json"


def resize_record(record: bytes, shorter_side: int, quality: int) -> bytes:
  """One serialized tf.train.Example with its ``image`` JPEG resized; unchanged if already small enough."""
  example = tf.train.Example.FromString(record)
  value = example.features.feature["image"].bytes_list.value
  height, width, _ = tf.image.extract_jpeg_shape(value[0]).numpy()  # the header alone: no decode to keep it
  if min(height, width) <= shorter_side:
    return record
  resized = preprocess.shorter_side_to(tf.io.decode_jpeg(value[0], channels=3), shorter_side)
  resized = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
  value[0] = tf.io.encode_jpeg(resized, quality=quality, chroma_downsampling=False).numpy()
  return example.SerializeToString(deterministic=True)  # map order fixed: a resumed copy is byte-identical


def _copy_shard(src: str, dst: str, shorter_side: int, quality: int) -> int:
  tmp = dst + ".incomplete"
  n = 0
  with tf.io.TFRecordWriter(tmp) as writer:
    for record in tf.data.TFRecordDataset(src).as_numpy_iterator():
      writer.write(resize_record(record, shorter_side, quality))
      n += 1
  os.replace(tmp, dst)
  return n


def write(
  name: str, data_dir: str, out_dir: str, *, shorter_side: int = 256, quality: int = 95, workers: int = 0
) -> str:
  """Writes the resized copy of the prepared ``name`` in ``data_dir`` into ``out_dir``; returns its path.

  ``workers`` processes copy shards in parallel (0 = one per CPU core). Resumes a copy that ``out_dir``
  already holds with the same parameters; refuses an ``out_dir`` that holds anything else.
  """
  import rlp_jax.data.datasets  # noqa: F401  (registers the embedded builders, refused below by name)

  try:
    source = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(
      f"--dataset: {name!r} is not a tfds dataset; name a prepared one, e.g. imagenet2012."
    ) from None
  image = source.info.features["image"] if "image" in source.info.features else None
  if not isinstance(image, tfds.features.Image) or image.encoding_format != "jpeg":
    raise UserError(
      f"--dataset: {name}'s images are not JPEGs; the copy resizes JPEG datasets (imagenet2012)."
    )
  if not source.is_prepared():
    raise UserError(f"--data_dir: {data_dir} holds no prepared {name}; prepare it first (tfds build {name}).")
  target = os.path.join(out_dir, os.path.relpath(source.data_dir, data_dir))
  identity = {
    "dataset": name,
    "source": os.path.abspath(source.data_dir),
    "shorter_side": shorter_side,
    "quality": quality,
  }
  marker = os.path.join(target, MARKER)
  if os.path.exists(marker):
    with open(marker) as f:
      found = json.load(f)
    if found != identity:
      raise UserError(f"--out_dir: {target} holds another resized copy ({found}); choose another --out_dir.")
  elif os.path.isdir(out_dir) and os.listdir(out_dir):
    raise UserError(f"--out_dir: {out_dir} is not empty; choose a new directory (nothing there is changed).")
  os.makedirs(target, exist_ok=True)
  with open(marker, "w") as f:
    json.dump(identity, f, indent=2)
  jobs, metadata = [], []
  for entry in sorted(os.listdir(source.data_dir)):
    path = os.path.join(source.data_dir, entry)
    if ".tfrecord-" in entry and not os.path.exists(os.path.join(target, entry)):
      jobs.append((path, os.path.join(target, entry)))
    elif ".tfrecord-" not in entry and os.path.isfile(path):
      metadata.append(entry)  # dataset_info.json, features.json, label names
  if jobs:
    # Spawned, not forked: TensorFlow's thread pools do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=context) as pool:
      done = pool.map(_copy_shard, *zip(*jobs), [shorter_side] * len(jobs), [quality] * len(jobs))
      list(done)
  # Last, and each whole or not at all: until dataset_info.json is there, tfds sees no prepared dataset, so
  # a run pointed at an unfinished copy is refused rather than reading missing shards.
  for entry in metadata:
    shutil.copy2(os.path.join(source.data_dir, entry), os.path.join(target, entry + ".incomplete"))
    os.replace(os.path.join(target, entry + ".incomplete"), os.path.join(target, entry))
  return target
