"""perf/input_cost.py: data shaped like ImageNet's and CIFAR-100's that the real pipeline reads; its per-core
rate beside the ceiling, on the full-size JPEGs and their resized copy."""

from __future__ import annotations

import tensorflow_datasets as tfds

from rlp_jax.data import resized_copy
from rlp_jax.infra import config_args
from rlp_jax.perf import input_cost


def test_jpegs_of_imagenets_sizes_feed_every_transform_and_its_ceiling_on_one_core(tmp_path):
  data_dir = input_cost.write_jpeg_imagenet(str(tmp_path / "full"), num_train=24, num_validation=16)
  ds = tfds.builder("imagenet2012", data_dir=data_dir).as_dataset(split="train")
  shapes = [tuple(ex["image"].shape) for ex in tfds.as_numpy(ds)]
  assert len(shapes) == 24 and all(min(h, w) >= 64 and c == 3 for h, w, c in shapes)
  assert sum(max(h, w) == 500 for h, w, _ in shapes) >= 12  # most are ImageNet's 500 x 375 or 375 x 500
  resized = resized_copy.write("imagenet2012", data_dir, str(tmp_path / "r"), shorter_side=64, workers=1)
  assert resized.startswith(str(tmp_path / "r"))

  config = config_args.from_file("configs/vit_imagenet.py:runlocal")  # 32 px crops: seconds, not minutes
  dirs = {"full size": data_dir, "resized 64": str(tmp_path / "r")}
  rows = input_cost.per_core(config, dirs, num_batches=2)
  transforms = ["train (Inception crop, flip)", "train (resize + central crop, flip)", "eval"]
  assert [(r["data"], r["transform"]) for r in rows] == [(d, t) for d in dirs for t in transforms]
  # Timed within one pass (an epoch's fresh start-up is not throughput): runlocal's epoch of 2 steps and the
  # 2 whole eval batches, each less the first.
  assert [r["batches"] for r in rows] == [1, 1, 1] * 2
  for r in rows:
    assert r["images_per_s"] > 0 and r["ceiling"] > 0
    assert r["ratio"] == r["images_per_s"] / r["ceiling"]


def test_cifar100_shaped_pngs_are_timed_from_the_start_of_each_pass(tmp_path):
  data_dir = input_cost.write_cifar100(str(tmp_path), num_train=48, num_test=24)
  example = next(iter(tfds.builder("cifar100", data_dir=data_dir).as_dataset(split="test")))
  assert tuple(example["image"].shape) == (32, 32, 3)
  config = config_args.from_file("configs/wrn_cifar100.py:runlocal")
  config.batch_size, config.eval.batch_size, config.max_steps_per_epoch = 8, 8, 0
  rows = input_cost.per_core(config, {"cifar100": data_dir}, num_batches=100)
  assert [r["transform"] for r in rows] == ["train (none crop)", "eval"]
  # Fixed-size images are decoded as they are read, into the shuffle buffer: the start-up is the decode, so
  # the first batch is timed too and the whole pass is measured (48 / 8 and 24 / 8 batches).
  assert [r["batches"] for r in rows] == [6, 3]
  assert all(r["ratio"] == r["images_per_s"] / r["ceiling"] > 0 for r in rows)
