"""tfds -> per-host NumPy batches that carry the example index and its random labels.

Data flow (DESIGN §2/§3)::

  tfds split -> this host's slice (tfds.split_for_jax_process; no host reads another's examples)
    -> {image, label, index}: the stable global index of every example (see below)
    -> keep only the dataset fraction (a pure function of (seed, index))
    -> shuffle (files, then a buffer; seeded by (seed, epoch)) -> skip what a resumed run already saw
    -> decode / augment / normalize -> batch
    -> attach noisy label / random labels by hashing ``index`` (labels.py)

**The global index.** Datasets built by ``rlp_jax.data.datasets`` store it as an ``index`` feature. Any other
tfds dataset (``cifar100``, ``imagenet2012``, any image classification dataset with ``image`` and ``label``)
is read with ``tfds.ReadConfig(add_tfds_id=True)``: tfds then attaches to every example the id
``"<name>-<split>.<format>-<shard:05d>-of-<num_shards:05d>__<offset>"`` (tensorflow_datasets/core/reader.py:
``_make_id`` joins the shard file's name and the example's position in that file with ``__``; the position
is absolute within the file even when a sub-split skips into it). The index is then
``sum(shard_lengths[:shard]) + offset`` (``info.splits[split].shard_lengths``), computed with TF string ops
in the pipeline. It is the example's position in the stored split, so it is the same for any host count,
read order, file shuffling, epoch or restart, and covers ``[0, m)`` exactly.

**Everything per example that is random is a function of (seed, index)** — random labels, label noise,
dataset-fraction membership and the augmentation draws (stateless TF random ops keyed by
``(hash(seed, epoch), index)``) — never of the read order. The batch order is a function of (seed, epoch)
only, so a resumed run (``skip`` batches) sees exactly the batches an uninterrupted run would.

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

**Eval** batches are unaugmented and padded; ``mask`` marks the real examples, and on several hosts every host
yields the same number of batches (missing ones are all-padding), so each example counts exactly once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from etils import epy

from rlp_jax.data import labels

# TensorFlow is loaded on first use, not on import: the train step and the benchmark need no data
# pipeline, and accelerator machines may have JAX without TensorFlow.
with epy.lazy_imports():
  import tensorflow as tf
  import tensorflow_datasets as tfds

# (mean, std) per channel, applied to pixels scaled to [0, 1].
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
  "unit": ((0.0,), (1.0,)),
  "symmetric": ((0.5,), (0.5,)),
  "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
CROPS = ("none", "inception")

# The tfds_id of an example: "<file name>-<shard>-of-<num shards>__<offset in that file>".
_TFDS_ID = r"^.*-(\d+)-of-(\d+)__(\d+)$"
_SHARD_FILE = re.compile(r"-(\d+)-of-(\d+)$")
_AUGMENT_STREAM, _FILE_SHUFFLE_STREAM = 0x3C6EF372, 0x1F83D9AB


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
  import rlp_jax.data.datasets  # noqa: F401  (registers the embedded builders with tfds)

  # Keep TensorFlow off the accelerators: it only feeds the input pipeline.
  tf.config.set_visible_devices([], "GPU")
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


# ----------------------------------------------------------------------------------------------------
# The global index
# ----------------------------------------------------------------------------------------------------


def shard_offsets(split_info) -> np.ndarray:
  """Index of the first example of every shard file of a split: ``cumsum(shard_lengths)`` shifted by one.

  Checks that the split's files are named ``...-<shard>-of-<num_shards>`` in shard order, which is what makes
  the shard number in a ``tfds_id`` a position in ``shard_lengths``.
  """
  lengths = list(split_info.shard_lengths)
  for i, name in enumerate(split_info.filenames):
    m = _SHARD_FILE.search(name)
    if not m or int(m[1]) != i or int(m[2]) != len(lengths):
      raise ValueError(
        f"tfds split {split_info.name!r}: shard file {name!r} is not '...-{i:05d}-of-{len(lengths):05d}', so "
        "the example index cannot be derived from tfds_id. Rebuild the dataset with a current tfds."
      )
  return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def index_from_tfds_id(tfds_id: tf.Tensor, offsets: tf.Tensor) -> tf.Tensor:
  """Global int64 index of the example whose tfds_id is ``tfds_id``: ``offsets[shard] + offset``."""
  shard = tf.strings.to_number(tf.strings.regex_replace(tfds_id, _TFDS_ID, r"\1"), tf.int64)
  offset = tf.strings.to_number(tf.strings.regex_replace(tfds_id, _TFDS_ID, r"\3"), tf.int64)
  return tf.gather(offsets, shard) + offset


@dataclasses.dataclass(frozen=True)
class _Source:
  builder: tfds.core.DatasetBuilder
  keyed: bool  # True: an 'index' feature (embedded datasets); False: derived from tfds_id
  encoded: bool  # images vary in size: kept encoded through the shuffle buffer, decoded after it
  jpeg: bool
  channels: int


def _source(config) -> _Source:
  builder = _builder(config.dataset, config.data_dir)
  features = builder.info.features
  image = features["image"]
  encoded = isinstance(image, tfds.features.Image) and None in tuple(image.shape)
  return _Source(
    builder=builder,
    keyed="index" in features,
    encoded=encoded,
    jpeg=encoded and image.encoding_format == "jpeg",
    channels=int(image.shape[-1] or 3),
  )


def _test_split(config, src: _Source) -> str:
  if config.eval.test_split:
    return config.eval.test_split
  if src.keyed or "test" in src.builder.info.splits:
    return "test"
  return "validation"


# ----------------------------------------------------------------------------------------------------
# Public: info, sizes, labels
# ----------------------------------------------------------------------------------------------------


def _check_augment(config, image_shape: tuple) -> tuple[int, ...]:
  """Validates ``config.augment`` against the stored images; returns the model's input shape."""
  aug = config.augment
  if aug.crop not in CROPS:
    raise ValueError(f"config.augment.crop must be one of {CROPS}, got {aug.crop!r}.")
  if aug.normalize not in NORMALIZATION:
    raise ValueError(f"config.augment.normalize must be one of {list(NORMALIZATION)}, got {aug.normalize!r}.")
  if aug.image_size < 0 or aug.eval_resize < 0:
    raise ValueError("config.augment.image_size and config.augment.eval_resize must be >= 0.")
  is_image = len(image_shape) == 3
  if not is_image and (aug.image_size or aug.flip or aug.crop != "none"):
    raise ValueError(
      f"config.augment: the inputs of config.dataset={config.dataset!r} have shape {image_shape}, not "
      "(H, W, C) images; set augment.image_size=0, augment.flip=False and augment.crop='none'."
    )
  if aug.image_size:
    shape = (aug.image_size, aug.image_size, image_shape[-1] or 3)
  elif None in image_shape:
    raise ValueError(
      f"config.augment.image_size: the images of config.dataset={config.dataset!r} vary in size "
      f"{image_shape}; set the model's input side, e.g. --config.augment.image_size=224."
    )
  else:
    shape = tuple(image_shape)
  mean, _ = NORMALIZATION[aug.normalize]
  if len(mean) > 1 and len(mean) != shape[-1]:
    raise ValueError(
      f"config.augment.normalize={aug.normalize!r} has {len(mean)}-channel statistics but the images have "
      f"{shape[-1]} channels; use 'unit' or 'symmetric'."
    )
  return shape


def get_info(config: ml_collections.ConfigDict) -> DataInfo:
  src = _source(config)
  info = src.builder.info
  missing = [k for k in ("image", "label") if k not in info.features]
  if missing:
    raise ValueError(
      f"config.dataset={config.dataset!r} has no {missing} feature(s); rlp_jax reads image classification "
      "datasets with 'image' and 'label' features."
    )
  if not src.keyed:
    shard_offsets(info.splits["train"])  # fails now if the example index cannot be derived
  m = info.splits["train"].num_examples
  selected = int(np.floor(config.dataset_fraction * m))
  return DataInfo(
    name=config.dataset,
    num_train=m,
    num_test=info.splits[_test_split(config, src)].num_examples,
    num_classes=info.features["label"].num_classes,
    input_shape=_check_augment(config, tuple(info.features["image"].shape)),
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


# ----------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------


def _host() -> tuple[int, int]:
  return jax.process_index(), jax.process_count()


def _host_split(split: str, drop_remainder: bool = False, host: tuple[int, int] | None = None):
  index, count = host or _host()
  return tfds.split_for_jax_process(
    split, process_index=index, process_count=count, drop_remainder=drop_remainder
  )


def _local_batch(batch_size: int) -> int:
  count = _host()[1]
  if batch_size % count:
    raise ValueError(f"batch size {batch_size} must be divisible by the {count} hosts.")
  return batch_size // count


def _read(src: _Source, split: str, *, shuffle_seed: int | None = None) -> tf.data.Dataset:
  """This host's examples of ``split`` (e.g. 'train', 'train[:5000]') as {image, label, index}.

  ``shuffle_seed`` (training) also shuffles the order of the host's shard files when it reads several.
  """
  sub = _host_split(split)
  decoders = {"image": tfds.decode.SkipDecoding()} if src.encoded else None
  if src.keyed:
    ds = src.builder.as_dataset(split=sub, shuffle_files=False, decoders=decoders)
    index_of = lambda ex: ex["index"]
  else:
    info = src.builder.info
    base = re.match(r"\w+", split)[0]
    offsets = tf.constant(shard_offsets(info.splits[base]))
    shuffle_files = (
      shuffle_seed is not None
      and len(info.splits[sub].file_instructions) > 1
      and not getattr(info, "disable_shuffling", False)
    )
    read_config = tfds.ReadConfig(add_tfds_id=True, shuffle_seed=shuffle_seed if shuffle_files else None)
    ds = src.builder.as_dataset(
      split=sub, shuffle_files=shuffle_files, read_config=read_config, decoders=decoders
    )
    index_of = lambda ex: index_from_tfds_id(ex["tfds_id"], offsets)
  return ds.map(
    lambda ex: {
      "image": ex["image"],
      "label": tf.cast(ex["label"], tf.int32),
      "index": tf.cast(index_of(ex), tf.int64),
    },
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )


# ----------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------


def _decode_image(data: tf.Tensor, channels: int) -> tf.Tensor:
  image = tf.io.decode_image(data, channels=channels, expand_animations=False)
  image.set_shape([None, None, channels])
  return image


def _resize_and_center_crop(image: tf.Tensor, size: int, resize: int) -> tf.Tensor:
  """Shorter side -> ``resize`` (antialiased bilinear), then the central ``size`` x ``size`` crop."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
  scale = resize / tf.minimum(h, w)
  new_h = tf.maximum(size, tf.cast(tf.round(h * scale), tf.int32))
  new_w = tf.maximum(size, tf.cast(tf.round(w * scale), tf.int32))
  image = tf.image.resize(image, [new_h, new_w], method="bilinear", antialias=True)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return tf.slice(image, [top, left, 0], [size, size, -1])


def _inception_crop(image: tf.Tensor, size: int, seed: tf.Tensor, src: _Source) -> tf.Tensor:
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


def _preprocessor(config, info: DataInfo, src: _Source, *, train: bool, epoch: int = 0):
  """The per-example map: {image (encoded or decoded), label, index} -> model-ready float32 image."""
  aug = config.augment
  shape = info.input_shape
  mean, std = (np.asarray(v, np.float32) for v in NORMALIZATION[aug.normalize])
  is_image = len(shape) == 3
  size = shape[0] if is_image else 0
  stored = tuple(src.builder.info.features["image"].shape)
  resize = src.encoded or (is_image and tuple(stored[:2]) != tuple(shape[:2]))
  crop = train and aug.crop == "inception"
  aug_seed = int(labels.hash32(config.seed, epoch, _AUGMENT_STREAM))

  def fn(ex):
    image = ex["image"]
    seed = tf.stack([tf.constant(aug_seed, tf.int64), ex["index"]])
    if crop:
      image = _inception_crop(image, size, tf.random.experimental.stateless_fold_in(seed, 0), src)
    else:
      if src.encoded:
        image = _decode_image(image, src.channels)
      if resize:
        image = _resize_and_center_crop(image, size, aug.eval_resize or size)
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


# ----------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------


def train_batches(config, info: DataInfo, epoch: int, skip: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """This host's training batches of one epoch, starting after ``skip`` batches (for resumption).

  Each epoch yields exactly ``steps_per_epoch`` batches on every host; the stream repeats after the
  shuffle so that a host whose slice is a little smaller still fills its last batch. Skipped examples are
  dropped before decoding (augmentation depends on (seed, epoch, index) only, not on the position).
  """
  src = _source(config)
  epoch_seed = int(labels.hash32(config.seed, epoch) >> np.uint32(1))
  ds = _read(src, "train", shuffle_seed=int(labels.hash32(config.seed, epoch, _FILE_SHUFFLE_STREAM) >> 1))
  mask = _selected_mask(config, info)
  if mask is not None:
    keep = tf.constant(mask)
    ds = ds.filter(lambda ex: tf.gather(keep, ex["index"]))
  ds = ds.shuffle(config.shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=True).repeat()
  local = _local_batch(config.batch_size)
  ds = ds.skip(skip * local).take((steps_per_epoch(config, info) - skip) * local)
  ds = ds.map(
    _preprocessor(config, info, src, train=True, epoch=epoch),
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=True,
  )
  ds = ds.batch(local, drop_remainder=True).prefetch(2)
  for batch in tfds.as_numpy(ds):
    yield attach_labels(dict(batch), config, info, epoch)


def _host_counts(src: _Source, split: str, chosen: np.ndarray | None, count: int) -> list[int]:
  """Examples each of ``count`` hosts yields from ``split``, read from the split metadata alone.

  Exact for tfds_id-indexed datasets (whose file instructions give each host's index ranges); for datasets
  with an ``index`` feature and a ``chosen`` filter, the host's slice size (an upper bound).
  """
  info = src.builder.info
  counts = []
  for host in range(count):
    sub = info.splits[_host_split(split, host=(host, count))]
    if chosen is None or src.keyed:
      counts.append(sub.num_examples)
      continue
    base = re.match(r"\w+", split)[0]
    offsets = shard_offsets(info.splits[base])
    n = 0
    for fi in sub.file_instructions:
      start = offsets[int(_SHARD_FILE.search(str(fi.filename))[1])] + fi.skip
      n += int(chosen[start : start + fi.take].sum())
    counts.append(n)
  return counts


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
  src = _source(config)
  chosen = None
  if split == "train_eval":
    mask = _selected_mask(config, info)
    chosen = np.ones(info.num_train, bool) if mask is None else mask.copy()
    if 0 < limit < chosen.sum():
      chosen[np.flatnonzero(chosen)[limit:]] = False
    # Index = position in the stored split: read only up to the last chosen example.
    tfds_split = "train" if src.keyed else f"train[:{int(np.flatnonzero(chosen)[-1]) + 1}]"
    keep = tf.constant(chosen)
    ds = _read(src, tfds_split).filter(lambda ex: tf.gather(keep, ex["index"]))
  elif split == "test":
    tfds_split = _test_split(config, src)
    ds = _read(src, tfds_split)
  else:
    raise ValueError(f"unknown eval split {split!r}")
  local = _local_batch(config.eval.batch_size)
  ds = ds.map(
    _preprocessor(config, info, src, train=False), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
  )
  ds = ds.batch(local)
  num_hosts = _host()[1]
  target = None
  if num_hosts > 1:
    target = max(math.ceil(n / local) for n in _host_counts(src, tfds_split, chosen, num_hosts))
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
