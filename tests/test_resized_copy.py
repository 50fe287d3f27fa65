"""data/resized_copy.py: the one-time resized copy keeps every index, label and file, and the eval transform
on it equals the original's up to the JPEG re-encoding."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from rlp_jax.data import input_pipeline, resized_copy
from rlp_jax.infra import config_args
from rlp_jax.infra.errors import UserError
from rlp_jax.perf import input_cost

SIDE = 96


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
  root = tmp_path_factory.mktemp("resized")
  full = input_cost.write_jpeg_imagenet(str(root / "full"), num_train=10, num_validation=8)
  target = resized_copy.write("imagenet2012", full, str(root / "copy"), shorter_side=SIDE, workers=1)
  return full, str(root / "copy"), target


def _records(path):
  return [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]


def test_same_files_same_records_only_large_images_resized(copies):
  full, _, target = copies
  source = os.path.join(full, os.path.relpath(target, copies[1]))
  shards = sorted(f for f in os.listdir(source) if ".tfrecord-" in f)
  assert shards == sorted(f for f in os.listdir(target) if ".tfrecord-" in f)
  assert os.path.exists(os.path.join(target, "dataset_info.json"))
  resized = kept = 0
  for shard in shards:
    before, after = _records(os.path.join(source, shard)), _records(os.path.join(target, shard))
    assert len(before) == len(after)
    for a, b in zip(before, after):
      fa, fb = a.features.feature, b.features.feature
      assert set(fa) == set(fb)
      assert all(fa[k] == fb[k] for k in fa if k != "image")  # label, file name: byte for byte
      old = tf.io.decode_jpeg(fa["image"].bytes_list.value[0]).shape
      new = tf.io.decode_jpeg(fb["image"].bytes_list.value[0]).shape
      if min(old[:2]) <= SIDE:
        assert fa["image"] == fb["image"]  # not re-encoded
        kept += 1
      else:
        assert min(new[:2]) == SIDE and abs(old[0] / old[1] - new[0] / new[1]) < 0.02
        resized += 1
  assert resized >= 10  # most of ImageNet's sizes are larger than 96 px


def test_eval_batches_on_the_copy_equal_the_originals_up_to_the_jpeg_re_encoding(copies):
  full, copy, _ = copies
  config = config_args.from_file("configs/vit_imagenet.py:runlocal")
  config.augment.image_size, config.augment.eval_resize, config.eval.batch_size = 80, SIDE, 4
  batches = {}
  for name, data_dir in (("full", full), ("copy", copy)):
    config.data_dir = data_dir
    info = input_pipeline.get_info(config)
    batches[name] = list(input_pipeline.eval_batches(config, info, "test"))
  assert len(batches["full"]) == len(batches["copy"]) == 2
  for a, b in zip(batches["full"], batches["copy"]):
    np.testing.assert_array_equal(a["index"], b["index"])
    np.testing.assert_array_equal(a["label"], b["label"])
    # Pixels in [-1, 1]: re-encoded at quality 95, these noisy synthetic images move by 0.016 on average
    # (2 of 255 levels), from the rounding to uint8 and the JPEG.
    assert np.abs(a["image"] - b["image"]).mean() < 0.025


def test_an_interrupted_copy_resumes_and_another_directory_is_refused(copies, tmp_path):
  full, copy, target = copies
  shard = sorted(f for f in os.listdir(target) if ".tfrecord-" in f)[0]
  with open(os.path.join(target, shard), "rb") as f:
    whole = f.read()
  os.replace(os.path.join(target, shard), os.path.join(target, shard + ".incomplete"))  # cut short
  resized_copy.write("imagenet2012", full, copy, shorter_side=SIDE, workers=1)
  with open(os.path.join(target, shard), "rb") as f:
    assert f.read() == whole
  assert not os.path.exists(os.path.join(target, shard + ".incomplete"))
  with pytest.raises(UserError, match="another resized copy"):
    resized_copy.write("imagenet2012", full, copy, shorter_side=SIDE + 1, workers=1)
  (tmp_path / "mine.txt").write_text("a user's file")
  with pytest.raises(UserError, match="not empty"):
    resized_copy.write("imagenet2012", full, str(tmp_path), workers=1)
  assert (tmp_path / "mine.txt").read_text() == "a user's file"
  with pytest.raises(UserError, match="holds no prepared imagenet2012"):
    resized_copy.write("imagenet2012", str(tmp_path / "nothing"), str(tmp_path / "out"), workers=1)
