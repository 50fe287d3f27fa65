"""The benchmark measures what it says: three variants, consistent ratios, FLOPs that grow with the heads."""

from __future__ import annotations

import types

from rlp_jax import benchmark


def test_benchmark_reports_three_variants_with_ratios(tiny_config):
  tiny_config.rlp.num_labels = 64
  results = benchmark.run(tiny_config, steps=2)
  assert list(results) == ["rlp_off", "measure", "regularize"]
  off, meas, reg = (results[k] for k in results)
  assert off["rlp_params"] == 0 and meas["rlp_params"] == reg["rlp_params"] > 0
  assert off["step_time_ratio"] == 1.0
  for r in results.values():
    assert r["step_s"] > 0 and r["compile_s"] > 0
    assert abs(r["images_per_s"] - tiny_config.batch_size / r["step_s"]) < 1e-6 * r["images_per_s"]
  # Heads add FLOPs; regularizing adds the backward pass into the features on top of measuring.
  assert 1.0 < meas["flops_ratio"] < reg["flops_ratio"]
  table = benchmark.format_results(tiny_config, results)
  assert "regularize" in table and "FLOP ratio" in table


def test_benchmark_works_without_the_dataset_for_known_shapes(tiny_config):
  tiny_config.dataset = "imagenet2012"
  info = benchmark.data_info(tiny_config)
  assert info.input_shape == (224, 224, 3) and info.num_train == 1_281_167


def test_peak_flops_table():
  dev = lambda kind: types.SimpleNamespace(device_kind=kind)
  assert benchmark.peak_flops(dev("NVIDIA H100 80GB HBM3")) == 989e12
  assert benchmark.peak_flops(dev("TPU v5 lite")) == 197e12
  assert benchmark.peak_flops(dev("TPU v4")) == 275e12
  assert benchmark.peak_flops(dev("cpu")) is None


def test_input_pipeline_throughput_and_label_share(tiny_config):
  r = benchmark.input_throughput(tiny_config, num_batches=6)
  assert r["examples"] == 5 * tiny_config.batch_size
  assert r["examples_per_s"] > 0 and 0 < r["label_share"] < 1
