"""tfds -> per-host NumPy batches that carry the example index and its random labels.

Data flow (DESIGN §2/§3)::

  tfds split (each example has a stable global ``index``)
    -> this host's slice (tfds.split_for_jax_process)
    -> keep only the dataset fraction (a pure function of (seed, index))
    -> shuffle (seeded by (seed, epoch)) -> decode/scale -> batch
    -> attach noisy label / random labels by hashing ``index`` (labels.py)

Everything per example that is random is a function of (seed, index), never of the read order, so it is
the same for any host count, shuffle seed, epoch or restart. The batch order itself is a function of
(seed, epoch), which is what makes a resumed run see exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from rlp_jax import labels

# Keep TensorFlow off the accelerators: it only feeds the input pipeline.
tf.config.set_visible_devices([], "GPU")


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the model and the labels need to know about a dataset."""

  name: str
  num_train: int  # m: size of the full train split (the index range)
  num_test: int
  num_classes: int
  input_shape: tuple[int, ...]
  num_selected: int  # floor(dataset_fraction * m): the examples actually trained on


@functools.cache
def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  import rlp_jax.datasets  # noqa: F401  (registers the embedded builders with tfds)

  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
      f"config.dataset={name!r} is not a tfds dataset ({e.__class__.__name__}). Use an "
      "embedded one ('digits', 'mnist1d/4k', 'mnist1d/10k', 'mnist1d/100k') or any "
      "tfds image classification name."
    ) from None
  # Embedded datasets build offline in seconds; others download (or need manual_dir) as tfds documents.
  builder.download_and_prepare()
  return builder


def get_info(config: ml_collections.ConfigDict) -> DataInfo:
  builder = _builder(config.dataset, config.data_dir)
  info = builder.info
  if "index" not in info.features:
    raise ValueError(
      f"config.dataset={config.dataset!r} has no 'index' feature; random labels are keyed "
      "by a stable per-example index. Use a dataset built by rlp_jax.datasets."
    )
  m = info.splits["train"].num_examples
  shape = tuple(info.features["image"].shape)
  selected = int(np.floor(config.dataset_fraction * m))
  return DataInfo(
    name=config.dataset,
    num_train=m,
    num_test=info.splits["test"].num_examples,
    num_classes=info.features["label"].num_classes,
    input_shape=shape,
    num_selected=selected,
  )


def num_labels(config: ml_collections.ConfigDict, info: DataInfo) -> int:
  """n: as configured, or m when every example gets its own label (``unique``)."""
  return info.num_train if config.rlp.label_mode == "unique" else config.rlp.num_labels


def steps_per_epoch(config: ml_collections.ConfigDict, info: DataInfo) -> int:
  steps = info.num_selected // config.batch_size
  if steps < 1:
    raise ValueError(
      f"config.batch_size={config.batch_size} exceeds the {info.num_selected} training examples; lower it."
    )
  return steps


def _selected_mask(config, info: DataInfo) -> np.ndarray | None:
  if config.dataset_fraction >= 1.0:
    return None
  return labels.fraction_mask(config.seed, info.num_train, config.dataset_fraction)


def _decode(example):
  image = example["image"]
  image = tf.cast(image, tf.float32) / 255.0 if image.dtype == tf.uint8 else tf.cast(image, tf.float32)
  return {"image": image, "label": tf.cast(example["label"], tf.int32), "index": example["index"]}


def attach_labels(batch: dict[str, np.ndarray], config, info: DataInfo, epoch: int) -> dict[str, np.ndarray]:
  """Adds ``rlp_labels`` (B, num_heads), the possibly-noisy ``label``, ``clean_label`` and ``is_noisy``."""
  index = batch["index"]
  batch["clean_label"] = batch["label"]
  batch["label"], batch["is_noisy"] = labels.noisy_labels(
    config.seed, index, batch["label"], info.num_classes, config.label_noise
  )
  if config.rlp.num_heads:
    batch["rlp_labels"] = labels.random_labels(
      config.seed,
      index,
      num_labels(config, info),
      config.rlp.num_heads,
      mode=config.rlp.label_mode,
      epoch=epoch,
      num_examples=info.num_train,
    )
  return batch


def _host_split(split: str, drop_remainder: bool) -> str:
  return tfds.split_for_jax_process(split, drop_remainder=drop_remainder)


def _local_batch(batch_size: int) -> int:
  if batch_size % jax.process_count():
    raise ValueError(f"batch size {batch_size} must be divisible by the {jax.process_count()} hosts.")
  return batch_size // jax.process_count()


def train_batches(config, info: DataInfo, epoch: int, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """This host's training batches of one epoch, starting after ``skip`` batches (for resumption).

  Each epoch yields exactly ``steps_per_epoch`` batches on every host; the stream repeats after the
  shuffle so that a host whose slice is a little smaller still fills its last batch.
  """
  builder = _builder(config.dataset, config.data_dir)
  ds = builder.as_dataset(split=_host_split("train", drop_remainder=False), shuffle_files=False)
  mask = _selected_mask(config, info)
  if mask is not None:
    keep = tf.constant(mask)
    ds = ds.filter(lambda ex: tf.gather(keep, ex["index"]))
  epoch_seed = int(labels.hash32(config.seed, epoch) >> np.uint32(1))
  ds = ds.shuffle(config.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=True).repeat()
  ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(_local_batch(config.batch_size), drop_remainder=True)
  ds = ds.skip(skip).take(steps_per_epoch(config, info) - skip).prefetch(2)
  for batch in tfds.as_numpy(ds):
    yield attach_labels(dict(batch), config, info, epoch)


def eval_batches(
  config, info: DataInfo, split: str, epoch: int = 0, *, limit: int = -1
) -> Iterator[dict[str, np.ndarray]]:
  """Unaugmented, unshuffled batches of ``test`` or of a fixed subset of training examples.

  ``train_eval`` is the first ``limit`` training examples (all if ``limit <= 0``), in index order, among
  those selected by ``dataset_fraction`` — examples the model actually trains on — with their random
  labels attached. The last batch is padded; ``mask`` marks real examples so each counts exactly once.
  """
  builder = _builder(config.dataset, config.data_dir)
  if split == "train_eval":
    ds = builder.as_dataset(split=_host_split("train", drop_remainder=False), shuffle_files=False)
    mask = _selected_mask(config, info)
    chosen = np.ones(info.num_train, bool) if mask is None else mask.copy()
    if 0 < limit < chosen.sum():
      chosen[np.flatnonzero(chosen)[limit:]] = False
    keep = tf.constant(chosen)
    ds = ds.filter(lambda ex: tf.gather(keep, ex["index"]))
  elif split == "test":
    ds = builder.as_dataset(split=_host_split("test", drop_remainder=False), shuffle_files=False)
  else:
    raise ValueError(f"unknown eval split {split!r}")
  local = _local_batch(config.eval.batch_size)
  ds = ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(local)
  for batch in tfds.as_numpy(ds.prefetch(2)):
    batch = dict(batch)
    real = len(batch["index"])
    batch = {
      k: np.concatenate([v, np.zeros((local - real,) + v.shape[1:], v.dtype)]) for k, v in batch.items()
    }
    batch["mask"] = np.arange(local) < real
    if split == "train_eval":
      batch = attach_labels(batch, config, info, epoch)
    yield batch
