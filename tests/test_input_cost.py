"""perf/input_cost.py: ImageNet-shaped JPEGs the real pipeline reads; its per-core rate beside the ceiling."""

from __future__ import annotations

import tensorflow_datasets as tfds

from rlp_jax.infra import config_args
from rlp_jax.perf import input_cost


def test_jpegs_of_imagenets_sizes_feed_the_pipeline_and_the_ceiling_on_one_core(tmp_path):
  data_dir = input_cost.write_jpeg_imagenet(str(tmp_path), num_train=24, num_validation=16)
  ds = tfds.builder("imagenet2012", data_dir=data_dir).as_dataset(split="train")
  shapes = [tuple(ex["image"].shape) for ex in tfds.as_numpy(ds)]
  assert len(shapes) == 24 and all(min(h, w) >= 64 and c == 3 for h, w, c in shapes)
  assert sum(max(h, w) == 500 for h, w, _ in shapes) >= 12  # most are ImageNet's 500 x 375 or 375 x 500

  config = config_args.from_file("configs/vit_imagenet.py:runlocal")  # 32 px crops: seconds, not minutes
  rows = input_cost.per_core(config, data_dir, num_batches=2)
  assert [r["transform"] for r in rows] == ["train (inception crop, flip)", "eval"]
  # Timed within one pass (an epoch's fresh start-up is not throughput): runlocal's epoch of 2 steps and the
  # 2 whole eval batches, each less the first.
  assert [r["batches"] for r in rows] == [1, 1]
  for r in rows:
    assert r["images_per_s"] > 0 and r["ceiling"] > 0
    assert r["ratio"] == r["images_per_s"] / r["ceiling"]
