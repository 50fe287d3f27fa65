"""Where examples come from: a tfds split, read by this host, each example with its stable global index.

**The global index.** Datasets built by ``rlp_jax.data.datasets`` store it as an ``index`` feature. Any other
tfds dataset (``cifar100``, ``imagenet2012``, any image classification dataset with ``image`` and ``label``)
is read with ``tfds.ReadConfig(add_tfds_id=True)``: tfds then attaches to every example the id
``"<name>-<split>.<format>-<shard:05d>-of-<num_shards:05d>__<offset>"`` (tensorflow_datasets/core/reader.py:
``_make_id`` joins the shard file's name and the example's position in that file with ``__``; the position
is absolute within the file even when a sub-split skips into it). The index is then
``sum(shard_lengths[:shard]) + offset`` (``info.splits[split].shard_lengths``), computed with TF string ops
in the pipeline. It is the example's position in the stored split, so it is the same for any host count,
read order, file shuffling, epoch or restart, and covers ``[0, m)`` exactly.

Reading is per host (``tfds.split_for_jax_process``): no host reads another's examples (docs/design.md §2).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shutil
import socket

import jax
import numpy as np
from etils import epy

from rlp_jax.infra.errors import UserError

# TensorFlow is loaded on first use, not on import: the train step and the benchmark need no data
# pipeline, and accelerator machines may have JAX without TensorFlow.
with epy.lazy_imports():
  import tensorflow as tf
  import tensorflow_datasets as tfds

# The tfds_id of an example: "<file name>-<shard>-of-<num shards>__<offset in that file>".
_TFDS_ID = r"^.*-(\d+)-of-(\d+)__(\d+)$"
SHARD_FILE = re.compile(r"-(\d+)-of-(\d+)$")


@functools.cache
def builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  import rlp_jax.data.datasets  # noqa: F401  (registers the embedded builders with tfds)

  # Keep TensorFlow off the accelerators: it only feeds the input pipeline.
  tf.config.set_visible_devices([], "GPU")
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(
      f"config.dataset={name!r} is not a tfds dataset ({e.__class__.__name__}). Use an "
      "embedded one ('digits', 'mnist1d/4k', 'mnist1d/10k', 'mnist1d/100k') or any "
      "tfds image classification name."
    ) from None
  # Embedded datasets build offline in seconds; others download (or need manual_dir) as tfds documents.
  if not builder.is_prepared() and not _embedded(builder):
    _check_can_prepare(name, builder, data_dir)
  before = _incomplete_dirs(builder)
  try:
    builder.download_and_prepare()
  except Exception as e:
    # tfds leaves an `incomplete.*` directory behind a failed build; ours go, nothing else is touched.
    for path in _incomplete_dirs(builder) - before:
      shutil.rmtree(path, ignore_errors=True)
    why = f"preparing it failed: {type(e).__name__}: {e}"
    raise MissingDataError(_missing(name, builder, data_dir, why)) from e
  return builder


class MissingDataError(UserError):
  """A dataset that is not prepared and cannot be prepared here."""


# Where tfds downloads from: prepared copies on GCS first, then the dataset's own URLs.
DOWNLOAD_PROBE = ("storage.googleapis.com", 443)


def _embedded(builder) -> bool:
  return type(builder).__module__.startswith("rlp_jax.")


def _incomplete_dirs(builder) -> set[str]:
  parent = os.path.dirname(os.fspath(builder.data_dir))
  if not os.path.isdir(parent):
    return set()
  return {os.path.join(parent, d) for d in os.listdir(parent) if "incomplete" in d}


def _check_can_prepare(name: str, builder, data_dir: str) -> None:
  """Fails within seconds where tfds would retry a download for minutes and end in a traceback."""
  manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  if manual:
    manual_dir = os.path.join(
      os.path.dirname(os.path.dirname(os.fspath(builder.data_dir))), "downloads", "manual"
    )
    if not (os.path.isdir(manual_dir) and os.listdir(manual_dir)):
      raise MissingDataError(
        _missing(
          name, builder, data_dir, f"it needs a manual download into {manual_dir}: {' '.join(manual.split())}"
        )
      )
    return
  try:
    socket.create_connection(DOWNLOAD_PROBE, timeout=3).close()
  except OSError as e:
    raise MissingDataError(
      _missing(
        name,
        builder,
        data_dir,
        f"it cannot be downloaded from here (no connection to {DOWNLOAD_PROBE[0]}: {e})",
      )
    ) from None


def _missing(name: str, builder, data_dir: str, why: str) -> str:
  where = data_dir or "the tfds default (~/tensorflow_datasets or $TFDS_DATA_DIR)"
  return (
    f"config.dataset={name!r} is not prepared in data_dir={where} ({builder.data_dir} is missing), "
    f"and {why}. Prepare it where it can be downloaded: `tfds build {name} --data_dir=DIR` (ImageNet: put "
    "the archives in DIR/downloads/manual first), copy DIR here or to gs://..., and pass "
    "--config.data_dir=DIR. Offline, "
    "the embedded datasets need no download: --config=configs/digits.py, or --config.dataset=mnist1d/4k."
  )


def shard_offsets(split_info) -> np.ndarray:
  """Index of the first example of every shard file of a split: ``cumsum(shard_lengths)`` shifted by one.

  Checks that the split's files are named ``...-<shard>-of-<num_shards>`` in shard order, which is what makes
  the shard number in a ``tfds_id`` a position in ``shard_lengths``.
  """
  lengths = list(split_info.shard_lengths)
  for i, name in enumerate(split_info.filenames):
    m = SHARD_FILE.search(name)
    if not m or int(m[1]) != i or int(m[2]) != len(lengths):
      raise UserError(
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
class Source:
  builder: tfds.core.DatasetBuilder
  keyed: bool  # True: an 'index' feature (embedded datasets); False: derived from tfds_id
  encoded: bool  # images vary in size: kept encoded through the shuffle buffer, decoded after it
  jpeg: bool
  channels: int


def source(config) -> Source:
  tfds_builder = builder(config.dataset, config.data_dir)
  features = tfds_builder.info.features
  image = features["image"]
  encoded = isinstance(image, tfds.features.Image) and None in tuple(image.shape)
  return Source(
    builder=tfds_builder,
    keyed="index" in features,
    encoded=encoded,
    jpeg=encoded and image.encoding_format == "jpeg",
    channels=int(image.shape[-1] or 3),
  )


def test_split(config, src: Source) -> str:
  if config.eval.test_split:
    return config.eval.test_split
  if src.keyed or "test" in src.builder.info.splits:
    return "test"
  return "validation"


def host() -> tuple[int, int]:
  return jax.process_index(), jax.process_count()


def host_split(split: str, drop_remainder: bool = False, process: tuple[int, int] | None = None):
  """This process's sub-split of ``split`` (or that of ``process = (index, count)``)."""
  index, count = process or host()
  return tfds.split_for_jax_process(
    split, process_index=index, process_count=count, drop_remainder=drop_remainder
  )


def local_batch(batch_size: int) -> int:
  count = jax.process_count()
  if batch_size % count:
    raise UserError(f"batch size {batch_size} must be divisible by the {count} hosts.")
  return batch_size // count


def read(src: Source, split: str, *, shuffle_seed: int | None = None) -> tf.data.Dataset:
  """This host's examples of ``split`` (e.g. 'train', 'train[:5000]') as {image, label, index}.

  ``shuffle_seed`` (training) also shuffles the order of the host's shard files when it reads several.
  """
  sub = host_split(split)
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


def host_counts(src: Source, split: str, chosen: np.ndarray | None, count: int) -> list[int]:
  """Examples each of ``count`` hosts yields from ``split``, read from the split metadata alone.

  Exact for tfds_id-indexed datasets (whose file instructions give each host's index ranges); for datasets
  with an ``index`` feature and a ``chosen`` filter, the host's slice size (an upper bound).
  """
  info = src.builder.info
  counts = []
  for h in range(count):
    sub = info.splits[host_split(split, process=(h, count))]
    if chosen is None or src.keyed:
      counts.append(sub.num_examples)
      continue
    base = re.match(r"\w+", split)[0]
    offsets = shard_offsets(info.splits[base])
    n = 0
    for fi in sub.file_instructions:
      start = offsets[int(SHARD_FILE.search(str(fi.filename))[1])] + fi.skip
      n += int(chosen[start : start + fi.take].sum())
    counts.append(n)
  return counts


def write_prepared(data_dir: str, name: str, shard_lengths: dict, example=None) -> str:
  """Writes a prepared tfds dataset ``name`` into ``data_dir``, without downloading; returns data_dir.

  ``shard_lengths``: split -> the lengths of its shard files. ``example(features, split, k)`` gives the
  k-th example of a split as ``features`` takes it; without it only the metadata is written
  (dataset_info.json with the splits' shard lengths: what ``tfds.testing.mock_data(policy=USE_FILES)``
  reads). For data made here: ImageNet-shaped JPEGs (perf/input_cost.py) and the tests' fake datasets.
  """
  prepared = tfds.builder(name, data_dir=data_dir)
  features = prepared.info.features
  os.makedirs(prepared.data_dir, exist_ok=True)
  infos = []
  for split, lengths in shard_lengths.items():
    template = tfds.core.ShardedFileTemplate(
      data_dir=prepared.data_path,
      template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name=prepared.name,
      split=split,
      filetype_suffix="tfrecord",
    )
    info = tfds.core.SplitInfo(name=split, shard_lengths=lengths, num_bytes=0, filename_template=template)
    if example is not None:
      k = 0
      for path, n in zip(info.filepaths, lengths):
        with tf.io.TFRecordWriter(os.fspath(path)) as writer:
          for _ in range(n):
            writer.write(features.serialize_example(example(features, split, k)))
            k += 1
    infos.append(info)
  prepared.info.set_splits(tfds.core.SplitDict(infos))
  prepared.info.write_to_directory(prepared.data_dir)
  return data_dir
