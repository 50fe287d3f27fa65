"""tfds -> per-host NumPy batches that carry the example index and its random labels.

Data flow (docs/design.md §2, §6)::

  tfds split -> this host's slice (tfds.split_for_jax_process; no host reads another's examples)
    -> {image, label, index}: the stable global index of every example (tfds_source.py)
    -> keep only the dataset fraction (a pure function of (seed, index))
    -> shuffle (files, then a buffer; seeded by (seed, epoch)) -> skip what a resumed run already saw
    -> decode / augment / normalize (preprocess.py) -> batch
    -> attach noisy label / random labels by hashing ``index`` (labels.py; the noise needs m and the fraction)

**Everything per example that is random is a function of (seed, index)** — random labels, label noise,
dataset-fraction membership and the augmentation draws (stateless TF random ops keyed by
``(hash(seed, epoch), index)``) — never of the read order. The batch order is a function of (seed, epoch)
only, so a resumed run (``skip`` batches) sees exactly the batches an uninterrupted run would.

**Eval** batches are unaugmented and padded; ``mask`` marks the real examples, and on several hosts every host
yields the same number of batches (missing ones are all-padding), so each example counts exactly once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from etils import epy

from rlp_jax.data import labels, preprocess, tfds_source
from rlp_jax.infra import streams
from rlp_jax.infra.errors import UserError

with epy.lazy_imports():
  import tensorflow as tf
  import tensorflow_datasets as tfds


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the model and the labels need to know about a dataset."""

  name: str
  num_train: int  # m: size of the full train split (the index range)
  num_test: int
  num_classes: int
  input_shape: tuple[int, ...]
  num_selected: int  # ⌊dataset_fraction·m⌋: the examples actually trained on (labels.exact_count)


# ----------------------------------------------------------------------------------------------------
# Public: info, sizes, labels
# ----------------------------------------------------------------------------------------------------


def get_info(config: ml_collections.ConfigDict) -> DataInfo:
  src = tfds_source.source(config)
  info = src.builder.info
  missing = [k for k in ("image", "label") if k not in info.features]
  if missing:
    raise UserError(
      f"config.dataset={config.dataset!r} has no {missing} feature(s); rlp_jax reads image classification "
      "datasets with 'image' and 'label' features."
    )
  if not src.keyed:
    tfds_source.shard_offsets(info.splits["train"])  # fails now if the example index cannot be derived
  m = info.splits["train"].num_examples
  selected = labels.exact_count(config.dataset_fraction, m)
  if selected < 1:
    raise UserError(
      f"config.dataset_fraction={config.dataset_fraction} keeps no example of the {m} in {config.dataset}'s "
      f"train split; use at least {1 / m:.2g}."
    )
  return DataInfo(
    name=config.dataset,
    num_train=m,
    num_test=info.splits[tfds_source.test_split(config, src)].num_examples,
    num_classes=info.features["label"].num_classes,
    input_shape=preprocess.check_augment(config, tuple(info.features["image"].shape)),
    num_selected=selected,
  )


def num_labels(config: ml_collections.ConfigDict, info: DataInfo) -> int:
  """n: as configured, or m when every example gets its own label (``unique``)."""
  return info.num_train if config.rlp.label_mode == "unique" else config.rlp.num_labels


def steps_per_epoch(config: ml_collections.ConfigDict, info: DataInfo) -> int:
  steps = info.num_selected // config.batch_size
  if steps < 1 and config.dataset_fraction < 1.0:
    raise UserError(
      f"config.dataset_fraction={config.dataset_fraction} keeps {info.num_selected} of the {info.num_train} "
      f"training examples, fewer than one batch (config.batch_size={config.batch_size}); raise the fraction "
      "or lower the batch size."
    )
  if steps < 1:
    raise UserError(
      f"config.batch_size={config.batch_size} exceeds the {info.num_selected} training examples; lower it."
    )
  cap = config.get("max_steps_per_epoch", 0)
  return min(steps, cap) if cap > 0 else steps


def _selected_mask(config, info: DataInfo) -> np.ndarray | None:
  if config.dataset_fraction >= 1.0:
    return None
  return labels.fraction_mask(config.seed, info.num_train, config.dataset_fraction)


def attach_labels(batch: dict[str, np.ndarray], config, info: DataInfo, epoch: int) -> dict[str, np.ndarray]:
  """Adds ``rlp_labels`` (B, num_heads), the possibly-noisy ``label``, ``clean_label`` and ``is_noisy``."""
  index = batch["index"]
  batch["clean_label"] = batch["label"]
  batch["label"], batch["is_noisy"] = labels.noisy_labels(
    config.seed,
    index,
    batch["label"],
    info.num_classes,
    config.label_noise,
    num_examples=info.num_train,
    fraction=config.dataset_fraction,
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


# ----------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------


def train_batches(config, info: DataInfo, epoch: int, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """This host's training batches of one epoch, starting after ``skip`` batches (for resumption).

  Each epoch yields exactly ``steps_per_epoch`` batches on every host; the stream repeats after the
  shuffle so that a host whose slice is a little smaller still fills its last batch. Skipped examples are
  dropped before decoding (augmentation depends on (seed, epoch, index) only, not on the position).
  """
  src = tfds_source.source(config)
  epoch_seed = int(labels.hash32(config.seed, epoch) >> np.uint32(1))
  ds = tfds_source.read(
    src, "train", shuffle_seed=int(labels.hash32(config.seed, epoch, streams.FILE_SHUFFLE) >> 1)
  )
  mask = _selected_mask(config, info)
  if mask is not None:
    keep = tf.constant(mask)
    ds = ds.filter(lambda ex: tf.gather(keep, ex["index"]))
  ds = ds.shuffle(config.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=True).repeat()
  local = tfds_source.local_batch(config.batch_size)
  ds = ds.skip(skip * local).take((steps_per_epoch(config, info) - skip) * local)
  ds = ds.map(
    preprocess.preprocessor(config, info.input_shape, src, train=True, epoch=epoch),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.batch(local, drop_remainder=True).prefetch(2).with_options(_train_options())
  for batch in tfds.as_numpy(ds):
    yield attach_labels(dict(batch), config, info, epoch)


def _train_options() -> tf.data.Options:
  """tf.data's defaults, but for one optimization that doubles the decode work of small datasets.

  tf.data fuses ``shuffle().repeat()`` into one op that, once an epoch's input is exhausted, refills its
  buffer from the next repetition ahead of need. An epoch here stops (``take``) at its end, so whatever it
  read ahead is thrown away: with a buffer that holds the whole split (CIFAR: 50,000 decoded images, buffer
  50,000) that is a second epoch of reading and decoding for every epoch trained. Unfused, the repetition
  starts only if a host's last batch needs it. The batches are the same (tests/test_input_pipeline.py);
  one core, CIFAR-100-shaped data: 2.4x the images/s (docs/design.md §5).
  """
  options = tf.data.Options()
  options.experimental_optimization.shuffle_and_repeat_fusion = False
  return options


def eval_batches(
  config, info: DataInfo, split: str, epoch: int = 0, *, limit: int = -1
) -> Iterator[dict[str, np.ndarray]]:
  """Unaugmented, unshuffled batches of ``test`` or of a fixed subset of training examples.

  ``train_eval`` is the first ``limit`` training examples (all if ``limit <= 0``), in index order, among
  those selected by ``dataset_fraction`` — examples the model actually trains on — with their random
  labels attached. ``test`` is ``config.eval.test_split`` (default 'test', else 'validation'). The last batch
  is padded; ``mask`` marks real examples so each counts exactly once. With several hosts, every host yields
  the same number of batches (the largest host's), padding with batches whose mask is all False.
  """
  src = tfds_source.source(config)
  chosen = None
  if split == "train_eval":
    mask = _selected_mask(config, info)
    chosen = np.ones(info.num_train, bool) if mask is None else mask.copy()
    if 0 < limit < chosen.sum():
      chosen[np.flatnonzero(chosen)[limit:]] = False
    # Index = position in the stored split: read only up to the last chosen example.
    tfds_split = "train" if src.keyed else f"train[:{int(np.flatnonzero(chosen)[-1]) + 1}]"
    keep = tf.constant(chosen)
    ds = tfds_source.read(src, tfds_split).filter(lambda ex: tf.gather(keep, ex["index"]))
  elif split == "test":
    tfds_split = tfds_source.test_split(config, src)
    ds = tfds_source.read(src, tfds_split)
  else:
    raise UserError(f"unknown eval split {split!r}")
  local = tfds_source.local_batch(config.eval.batch_size)
  ds = ds.map(
    preprocess.preprocessor(config, info.input_shape, src, train=False),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.batch(local)
  num_hosts = jax.process_count()
  target = None
  if num_hosts > 1:
    target = max(math.ceil(n / local) for n in tfds_source.host_counts(src, tfds_split, chosen, num_hosts))
  empty = {
    k: np.zeros((local,) + tuple(s.shape[1:]), s.dtype.as_numpy_dtype) for k, s in ds.element_spec.items()
  }

  def finish(batch):
    real = len(batch["index"])
    batch = {
      k: np.concatenate([v, np.zeros((local - real,) + v.shape[1:], v.dtype)]) for k, v in batch.items()
    }
    batch["mask"] = np.arange(local) < real
    if split == "train_eval":
      batch = attach_labels(batch, config, info, epoch)
    return batch

  done = 0
  for batch in tfds.as_numpy(ds.prefetch(2)):
    done += 1
    yield finish(dict(batch))
  while target is not None and done < target:
    done += 1
    yield finish({k: v[:0] for k, v in empty.items()})
