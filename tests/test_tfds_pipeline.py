"""The pipeline on tfds datasets without an ``index`` feature (cifar100, imagenet2012): index from tfds_id.

No download is possible here, so the datasets are written by ``write_fake_tfds``: genuine tfds files of the
real builder (its own features, serialization and ``<name>-<split>.tfrecord-<shard>-of-<N>`` naming, several
shards of uneven length) holding tiny synthetic examples, read back through the real tfds reader; and
``tfds.testing.mock_data`` with the dataset's metadata for the default mocked reader.

Every synthetic example stores its position ``k`` in the split: in its text feature (``id`` /
``file_name``: ``"<split>_<k>"``), in its label (``k mod num_classes``) and, for lossless (PNG) images, in
pixel rows 0 and 1 (``k mod 256``, ``k // 256`` on channel 0; constant along rows, so flip-invariant).
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rlp_jax.data import input_pipeline, labels, tfds_source
from rlp_jax.infra import configuration


def _example(features, split: str, k: int, rng) -> dict:
  ex = {}
  for name, feature in features.items():
    if isinstance(feature, tfds.features.Image):
      h, w, c = feature.shape
      if h is None:  # variable-size (ImageNet-like): 24..63 pixels per side
        h, w = 24 + (7 * k) % 40, 24 + (13 * k) % 40
      image = rng.integers(0, 256, (h, w, c or 3), dtype=np.uint8)
      image[0, :, 0], image[1, :, 0] = k % 256, k // 256
      ex[name] = image
    elif isinstance(feature, tfds.features.ClassLabel):
      ex[name] = k % feature.num_classes
    elif isinstance(feature, tfds.features.Text):
      ex[name] = f"{split}_{k:05d}"
    else:
      raise NotImplementedError(f"fake data for feature {name!r} ({type(feature).__name__})")
  return ex


def write_fake_tfds(data_dir: str, name: str, splits: dict[str, list[int]], *, files: bool = True) -> str:
  """Writes a prepared tfds dataset ``name`` into ``data_dir``: split -> shard lengths. Returns data_dir.

  ``files=False`` writes only the metadata (dataset_info.json with the splits' shard lengths), which is
  what ``tfds.testing.mock_data(policy=USE_FILES, data_dir=...)`` reads.
  """
  rng = np.random.default_rng(0)
  example = (lambda features, split, k: _example(features, split, k, rng)) if files else None
  return tfds_source.write_prepared(data_dir, name, splits, example)


TRAIN_SHARDS, TEST_SHARDS = [13, 11, 12, 12], [7, 6]  # m = 48 in 4 uneven shards; 13 test examples


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("fake_tfds"))
  write_fake_tfds(d, "cifar100", {"train": TRAIN_SHARDS, "test": TEST_SHARDS})
  write_fake_tfds(d, "imagenet2012", {"train": [10, 9, 11], "validation": [5, 4]})
  tfds_source.builder.cache_clear()
  yield d
  tfds_source.builder.cache_clear()


@pytest.fixture
def cifar(fake_dir):
  c = configuration.base_config()
  c.dataset, c.data_dir = "cifar100", fake_dir
  c.batch_size, c.eval.batch_size = 8, 8
  c.rlp.num_heads, c.rlp.num_labels = 2, 7
  c.shuffle_buffer = 64
  return c


@pytest.fixture
def hosts(monkeypatch):
  """``hosts(i, n)`` makes this process host ``i`` of ``n`` (what tfds.split_for_jax_process and the
  pipeline's per-host batch size see)."""

  def set_host(index: int, count: int):
    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: count)

  return set_host


def _position(image: np.ndarray) -> np.ndarray:
  """The stored position k written into pixel rows 0/1 (images in [0, 1], 'unit' normalization)."""
  return np.round(image[:, 0, 0, 0] * 255).astype(int) + 256 * np.round(image[:, 1, 0, 0] * 255).astype(int)


def test_index_from_tfds_id_matches_the_real_tfds_reader(fake_dir):
  builder = tfds.builder("cifar100", data_dir=fake_dir)
  offsets = tfds_source.shard_offsets(builder.info.splits["train"])
  assert offsets.tolist() == [0, 13, 24, 36]
  for split in ("train", "train[5:30]", tfds.even_splits("train", 3)[1]):
    ds = builder.as_dataset(
      split=split, shuffle_files=True, read_config=tfds.ReadConfig(add_tfds_id=True, shuffle_seed=3)
    )
    ex = list(
      tfds.as_numpy(ds.map(lambda e: {**e, "index": tfds_source.index_from_tfds_id(e["tfds_id"], offsets)}))
    )
    assert ex, split
    for e in ex:
      # The format the derivation relies on, as tfds writes it: "<file name>__<offset in that file>".
      shard, offset = e["tfds_id"].decode().rsplit("-of-", 1)[0][-5:], e["tfds_id"].decode().split("__")[1]
      assert e["tfds_id"].decode() == f"cifar100-train.tfrecord-{shard}-of-00004__{offset}"
      assert e["index"] == int(e["id"].decode().split("_")[1]) == offsets[int(shard)] + int(offset)


def test_train_epochs_keep_index_label_maps_for_any_host_count_and_shuffle(cifar, hosts):
  """index -> (position, clean/noisy label, random labels, in-fraction) is one map for 1/2/4 hosts, two
  shuffle seeds (epochs 0 and 3: different file and buffer shuffles) and both read paths."""
  cifar.label_noise, cifar.dataset_fraction = 0.3, 0.75
  cifar.augment.flip = True  # the position code is flip-invariant; flips must not disturb the index
  info = input_pipeline.get_info(cifar)
  assert (info.num_train, info.num_test, info.num_classes, info.input_shape) == (48, 13, 100, (32, 32, 3))
  keep = labels.fraction_mask(cifar.seed, 48, 0.75)
  spe = input_pipeline.steps_per_epoch(cifar, info)
  seen: dict[int, tuple] = {}
  orders = {}
  for count in (1, 2, 4):
    host_ranges = np.array_split(np.arange(48), count)  # tfds.even_splits: contiguous, first ones larger
    for epoch in (0, 3):
      order = []
      for h in range(count):
        hosts(h, count)
        batches = list(input_pipeline.train_batches(cifar, info, epoch))
        assert len(batches) == spe and all(len(b["index"]) == 8 // count for b in batches)
        for b in batches:
          idx = b["index"]
          assert set(idx) <= set(host_ranges[h]), "a host read another host's examples"
          assert keep[idx].all()
          np.testing.assert_array_equal(_position(b["image"]), idx)
          np.testing.assert_array_equal(b["clean_label"], idx % 100)
          np.testing.assert_array_equal(
            b["rlp_labels"], labels.random_labels(cifar.seed, idx, 7, 2, num_examples=48)
          )
          for i, r, y, c in zip(idx, b["rlp_labels"], b["label"], b["clean_label"]):
            seen.setdefault(int(i), (tuple(r), int(y), int(c)))
            assert seen[int(i)] == (tuple(r), int(y), int(c))
          order.extend(idx.tolist())
      orders[count, epoch] = order
    assert orders[count, 0] != orders[count, 3]
  # Label noise is on and keyed by the index: exactly the examples of noise_mask, whatever the host count.
  idx = np.array(sorted(seen))
  noisy = np.array([seen[i][1] != seen[i][2] for i in idx])
  np.testing.assert_array_equal(
    noisy, labels.noise_mask(cifar.seed, idx, 0.3, num_examples=48, fraction=0.75)
  )
  assert noisy.any()


def test_resumed_epoch_sees_the_same_augmented_batches(cifar):
  cifar.augment.flip = True
  cifar.augment.crop = "inception"
  info = input_pipeline.get_info(cifar)
  full = list(input_pipeline.train_batches(cifar, info, 2))
  resumed = list(input_pipeline.train_batches(cifar, info, 2, skip=2))
  assert len(resumed) == len(full) - 2
  for a, b in zip(full[2:], resumed):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["image"], b["image"])
  again = list(input_pipeline.train_batches(cifar, info, 2))
  np.testing.assert_array_equal(full[0]["image"], again[0]["image"])


@pytest.mark.parametrize("count", [1, 2, 4])
def test_eval_counts_every_example_once_on_any_host_count(cifar, hosts, count):
  cifar.dataset_fraction = 0.5
  info = input_pipeline.get_info(cifar)
  keep = labels.fraction_mask(cifar.seed, 48, 0.5)
  first10 = np.flatnonzero(keep)[:10]
  expected = {"test": list(range(13)), "train_eval": sorted(first10.tolist())}
  for split, want in expected.items():
    got, lengths = [], []
    for h in range(count):
      hosts(h, count)
      batches = list(input_pipeline.eval_batches(cifar, info, split, limit=10))
      lengths.append(len(batches))
      for b in batches:
        assert len(b["mask"]) == 8 // count
        got.extend(b["index"][b["mask"]].tolist())
        np.testing.assert_array_equal(_position(b["image"][b["mask"]]), b["index"][b["mask"]])
        if split == "train_eval":
          np.testing.assert_array_equal(
            b["rlp_labels"], labels.random_labels(cifar.seed, b["index"], 7, 2, num_examples=48)
          )
    assert sorted(got) == want, split
    assert len(set(lengths)) == 1, f"hosts ran different numbers of eval steps: {lengths}"


def test_imagenet_shaped_jpegs_crop_flip_resize(fake_dir):
  c = configuration.base_config()
  c.dataset, c.data_dir = "imagenet2012", fake_dir
  c.batch_size, c.eval.batch_size, c.shuffle_buffer = 6, 4, 64
  c.augment.update(flip=True, crop="inception", image_size=16, eval_resize=20, normalize="symmetric")
  info = input_pipeline.get_info(c)
  assert (info.num_train, info.num_test, info.num_classes, info.input_shape) == (30, 9, 1000, (16, 16, 3))
  batches = list(input_pipeline.train_batches(c, info, 0))
  assert len(batches) == 5
  images = np.concatenate([b["image"] for b in batches])
  assert images.shape == (30, 16, 16, 3) and images.dtype == np.float32
  assert -1.0 <= images.min() < 0 < images.max() <= 1.0
  assert sorted(np.concatenate([b["index"] for b in batches]).tolist()) == list(range(30))
  for b in batches:
    np.testing.assert_array_equal(b["clean_label"], b["index"] % 1000)
  again = list(input_pipeline.train_batches(c, info, 0))
  np.testing.assert_array_equal(batches[0]["image"], again[0]["image"])
  order = lambda bs: np.concatenate([b["index"] for b in bs]).tolist()
  assert order(batches) != order(list(input_pipeline.train_batches(c, info, 1)))  # reshuffled per epoch
  # 'test' is the validation split (there is no 'test'); resize 20 + central crop 16, no augmentation.
  ev = list(input_pipeline.eval_batches(c, info, "test"))
  assert sorted(np.concatenate([b["index"][b["mask"]] for b in ev]).tolist()) == list(range(9))
  assert all(b["image"].shape == (4, 16, 16, 3) for b in ev)
  ev2 = list(input_pipeline.eval_batches(c, info, "test"))
  np.testing.assert_array_equal(ev[0]["image"], ev2[0]["image"])


def test_variable_size_images_need_an_input_size(fake_dir):
  c = configuration.base_config()
  c.dataset, c.data_dir = "imagenet2012", fake_dir
  with pytest.raises(ValueError, match=r"config\.augment\.image_size"):
    input_pipeline.get_info(c)


def test_cifar100_under_tfds_mock_data(tmp_path):
  """The same pipeline on tfds' own mocked reader (random examples, tfds_id of one shard)."""
  meta = write_fake_tfds(str(tmp_path), "cifar100", {"train": [24], "test": [24]}, files=False)
  c = configuration.base_config()
  c.dataset, c.batch_size, c.eval.batch_size, c.shuffle_buffer = "cifar100", 8, 16, 64
  c.augment.normalize = "cifar100"
  tfds_source.builder.cache_clear()
  try:
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=meta):
      info = input_pipeline.get_info(c)
      assert (info.num_train, info.num_classes, info.input_shape) == (24, 100, (32, 32, 3))
      batches = list(input_pipeline.train_batches(c, info, 0))
      assert sorted(np.concatenate([b["index"] for b in batches]).tolist()) == list(range(24))
      for b in batches:
        np.testing.assert_array_equal(b["rlp_labels"], labels.random_labels(0, b["index"], 10))
      assert abs(float(np.concatenate([b["image"] for b in batches]).mean())) < 1.0  # standardized
      ev = list(input_pipeline.eval_batches(c, info, "test"))
      assert sum(int(b["mask"].sum()) for b in ev) == 24
  finally:
    tfds_source.builder.cache_clear()
