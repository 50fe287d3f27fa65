"""The tfds input pipeline: index-keyed labels, deterministic epochs, exact resumption, exact eval counts."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from rlp_jax.data import input_pipeline, labels, tfds_source


def _epoch(config, info, epoch, skip=0):
  return list(input_pipeline.train_batches(config, info, epoch, skip=skip))


def test_train_batches_carry_index_and_hashed_labels(tiny_config):
  cfg = tiny_config
  cfg.rlp.num_heads = 3
  cfg.label_noise = 0.25
  info = input_pipeline.get_info(cfg)
  assert (info.num_train, info.num_test, info.num_classes, info.input_shape) == (1437, 360, 10, (8, 8, 1))
  batches = _epoch(cfg, info, 0)
  assert len(batches) == input_pipeline.steps_per_epoch(cfg, info) == 1437 // 64
  b = batches[0]
  assert b["image"].shape == (64, 8, 8, 1) and b["image"].dtype == np.float32
  assert 0.0 <= b["image"].min() and b["image"].max() <= 1.0
  np.testing.assert_array_equal(b["rlp_labels"], labels.random_labels(cfg.seed, b["index"], 10, 3))
  noisy, is_noisy = labels.noisy_labels(cfg.seed, b["index"], b["clean_label"], 10, 0.25, num_examples=1437)
  np.testing.assert_array_equal(b["label"], noisy)
  np.testing.assert_array_equal(b["is_noisy"], is_noisy)
  # One epoch visits distinct examples, and the same example keeps its labels in a later epoch.
  idx = np.concatenate([x["index"] for x in batches])
  assert len(np.unique(idx)) == len(idx)
  later = {
    i: (r, y) for x in _epoch(cfg, info, 3) for i, r, y in zip(x["index"], x["rlp_labels"], x["label"])
  }
  for x in batches:
    for i, r, y in zip(x["index"], x["rlp_labels"], x["label"]):
      if i in later:
        assert later[i][0].tolist() == r.tolist() and later[i][1] == y


def test_epoch_order_is_deterministic_per_epoch_and_resumable(tiny_config):
  info = input_pipeline.get_info(tiny_config)
  e1 = _epoch(tiny_config, info, 1)
  again = _epoch(tiny_config, info, 1)
  e2 = _epoch(tiny_config, info, 2)
  order = lambda bs: np.concatenate([b["index"] for b in bs])
  np.testing.assert_array_equal(order(e1), order(again))
  assert not np.array_equal(order(e1), order(e2))
  resumed = _epoch(tiny_config, info, 1, skip=5)
  assert len(resumed) == len(e1) - 5
  np.testing.assert_array_equal(order(resumed), order(e1[5:]))


def test_shuffled_label_mode_gives_new_labels_each_epoch(tiny_config):
  tiny_config.rlp.label_mode = "shuffled"
  info = input_pipeline.get_info(tiny_config)
  lab = {
    e: {i: r[0] for b in _epoch(tiny_config, info, e) for i, r in zip(b["index"], b["rlp_labels"])}
    for e in (0, 1)
  }
  common = sorted(set(lab[0]) & set(lab[1]))
  assert np.mean([lab[0][i] == lab[1][i] for i in common]) < 0.3


def test_unique_mode_uses_m_labels(tiny_config):
  tiny_config.rlp.label_mode = "unique"
  info = input_pipeline.get_info(tiny_config)
  assert input_pipeline.num_labels(tiny_config, info) == 1437
  y = np.concatenate(
    [b["rlp_labels"][b["mask"], 0] for b in input_pipeline.eval_batches(tiny_config, info, "train_eval")]
  )
  assert sorted(y.tolist()) == list(range(1437))


@pytest.mark.parametrize("fraction", [0.1, 0.5])
def test_dataset_fraction_trains_on_exactly_the_selected_examples(tiny_config, fraction):
  tiny_config.dataset_fraction = fraction
  tiny_config.batch_size = 16
  info = input_pipeline.get_info(tiny_config)
  keep = labels.fraction_mask(tiny_config.seed, 1437, fraction)
  assert info.num_selected == keep.sum() == int(1437 * fraction)
  seen = np.concatenate([b["index"] for b in _epoch(tiny_config, info, 0)])
  assert keep[seen].all() and len(np.unique(seen)) == len(seen) == (keep.sum() // 16) * 16
  ev = [b for b in input_pipeline.eval_batches(tiny_config, info, "train_eval")]
  ev_idx = np.concatenate([b["index"][b["mask"]] for b in ev])
  assert sorted(ev_idx.tolist()) == np.flatnonzero(keep).tolist()


def test_eval_counts_every_example_exactly_once(tiny_config):
  tiny_config.eval.batch_size = 128  # 360 = 2 full batches + a padded one
  info = input_pipeline.get_info(tiny_config)
  test = list(input_pipeline.eval_batches(tiny_config, info, "test"))
  assert all(len(b["mask"]) == 128 for b in test)
  idx = np.concatenate([b["index"][b["mask"]] for b in test])
  assert sorted(idx.tolist()) == list(range(360))
  limited = np.concatenate(
    [b["index"][b["mask"]] for b in input_pipeline.eval_batches(tiny_config, info, "train_eval", limit=100)]
  )
  assert sorted(limited.tolist()) == list(range(100))


def test_pipeline_on_tfds_mock_data(tiny_config):
  """The same code on tfds' mock data: arbitrary read order, labels keyed by the mocked index."""
  m = 96

  def as_dataset(self, split, **kwargs):
    n = m if "train" in str(split) else 32
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices(
      {
        "image": rng.integers(0, 255, (n, 8, 8, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, n),
        "index": rng.permutation(n).astype(np.int64),
      }
    )

  tfds_source.builder.cache_clear()
  try:
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
      tiny_config.dataset = "mnist1d"  # any registered builder: the mock replaces its data
      tiny_config.batch_size = 32
      info = input_pipeline.DataInfo(
        "mock", num_train=m, num_test=32, num_classes=10, input_shape=(8, 8, 1), num_selected=m
      )
      batches = _epoch(tiny_config, info, 0)
      assert len(batches) == 3
      for b in batches:
        np.testing.assert_array_equal(b["rlp_labels"][:, 0], labels.random_labels(0, b["index"], 10)[:, 0])
      assert sorted(np.concatenate([b["index"] for b in batches]).tolist()) == list(range(m))
      ev = list(input_pipeline.eval_batches(tiny_config, info, "test"))
      assert sum(int(b["mask"].sum()) for b in ev) == 32
  finally:
    tfds_source.builder.cache_clear()


def _reads_per_epoch(config, monkeypatch) -> int:
  """How many examples one training epoch reads from the tfds split."""
  counter = tf.Variable(0, dtype=tf.int64)
  read = tfds_source.read

  def counted(*args, **kwargs):
    def count(ex):
      with tf.control_dependencies([counter.assign_add(1)]):
        return {k: tf.identity(v) for k, v in ex.items()}

    return read(*args, **kwargs).map(count)

  monkeypatch.setattr(tfds_source, "read", counted)
  info = input_pipeline.get_info(config)
  _epoch(config, info, 0)
  return int(counter.numpy())


def test_an_epoch_reads_its_split_once_when_the_shuffle_buffer_holds_all_of_it(tiny_config, monkeypatch):
  # tf.data's shuffle-and-repeat fusion refills the buffer from the next repetition ahead of need: with a
  # buffer that holds the split (CIFAR's 50,000) every epoch read and decoded its data twice.
  tiny_config.shuffle_buffer = 10_000
  reads = _reads_per_epoch(tiny_config, monkeypatch)
  assert 1437 <= reads < 1437 + tiny_config.batch_size
  fused = tf.data.Options()
  fused.experimental_optimization.shuffle_and_repeat_fusion = True
  monkeypatch.setattr(input_pipeline, "_train_options", lambda: fused)
  assert _reads_per_epoch(tiny_config, monkeypatch) > 1.5 * 1437  # the planted read-ahead is seen
