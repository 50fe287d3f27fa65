"""The benchmark measures what it says: three variants, consistent ratios, FLOPs that grow with the heads."""

from __future__ import annotations

import types

import pytest

from rlp_jax.perf import benchmark, flops
from rlp_jax.training import steps


def test_benchmark_reports_three_variants_with_ratios(tiny_config):
  tiny_config.rlp.num_labels = 64
  results = benchmark.run(tiny_config, steps=2)
  assert list(results) == ["rlp_off", "measure", "regularize"]
  off, meas, reg = (results[k] for k in results)
  assert off["rlp_params"] == 0 and meas["rlp_params"] == reg["rlp_params"] > 0
  for r in results.values():
    assert r["step_s"] > 0 and r["compile_s"] > 0 and r["images_per_s"] > 0
  # Heads add FLOPs; regularizing adds the backward pass into the features on top of measuring.
  assert 1.0 < meas["flops_ratio"] < reg["flops_ratio"]
  table = benchmark.format_results(tiny_config, results)
  assert "regularize" in table and "FLOP ratio" in table


def test_benchmark_works_without_the_dataset_for_known_shapes(tiny_config):
  tiny_config.dataset = "imagenet2012"
  info = benchmark.data_info(tiny_config)
  assert info.input_shape == (224, 224, 3) and info.num_train == 1_281_167


def test_every_peak_flops_entry_is_reachable():
  """Device kinds match by case-insensitive substring, first match wins: an entry placed after one whose key
  it contains (``TPU v5e`` after ``TPU v5``) would never be used, and would silently report a wrong MFU."""
  dev = lambda kind: types.SimpleNamespace(device_kind=kind)
  for key, peak in benchmark.PEAK_FLOPS:
    assert benchmark.peak_flops(dev(key)) == peak, key
    assert benchmark.peak_flops(dev(f"NVIDIA {key.lower()} 80GB")) == peak, key
  assert benchmark.peak_flops(dev("cpu")) is None and benchmark.peak_flops(object()) is None
  # Short names on the command line (plan --device_kind=v5p) mean the same devices.
  for short, long in (("v5p", "TPU v5p"), ("v5e", "TPU v5e"), ("h100", "H100"), ("tpu-v4", "TPU v4")):
    assert benchmark.peak_flops(short) == benchmark.peak_flops(long) is not None, short


def test_input_pipeline_throughput_and_label_share(tiny_config):
  r = benchmark.input_throughput(tiny_config, num_batches=6)
  assert r["examples"] == 5 * tiny_config.batch_size
  assert r["examples_per_s"] > 0 and 0 < r["label_share"] < 1


@pytest.mark.parametrize("norm,chunk", [(True, 0), (False, 0), (True, 1024), (False, 1024)])
def test_regularizing_reuses_the_measurements_head_matmuls(tiny_config, norm, chunk):
  """L_reg's gradient is a per-row multiple of L_rnd's logit gradient (head_loss.py): with λ > 0 the step
  does one head matmul more than with λ = 0 (dx into the features) — none more when the measuring step
  already computes it for the LayerNorm's scale and shift. Counted in the compiled programs; with label
  chunks too, where λ > 0 also holds no second dW accumulator in the loop."""
  c = tiny_config
  c.rlp.update(
    num_labels=8192, norm_layers="all" if norm else "", layers="pre_logits", num_heads=1, label_chunk=chunk
  )
  c.probes.layers = ""
  info = benchmark.data_info(c)
  xla, counted, memory = {}, {}, {}
  for name, cfg in benchmark.variants(c)[1:]:
    experiment, state, batch, compiled, _ = benchmark.compile_step(cfg, info, abstract=True)
    costs = benchmark.compiled_costs(compiled)
    xla[name], memory[name] = costs["flops_per_step"], costs["device_memory_bytes"]
    counted[name] = flops.count(steps.make_train_step(experiment), state, batch)
  dim = experiment.feature_dims["pre_logits"]
  one_matmul = 2 * c.batch_size * dim * experiment.num_labels
  # Ours from the jaxpr (flops.py), which must see the sharing; XLA's count of the compiled program
  # (which counts a while loop's body once, so only without chunks).
  for f in (counted, xla) if chunk == 0 else (counted,):
    extra = (f["regularize"] - f["measure"]) / one_matmul
    if norm:
      assert extra < 0.1, (f, extra)
    else:
      assert 0.9 < extra < 1.2, (f, extra)
  if chunk:
    # The dW that L_reg's route does not need is a loop carry nothing reads: XLA must drop it.
    kernel_bytes = dim * experiment.num_labels * 4
    assert memory["regularize"] - memory["measure"] < kernel_bytes / 2, memory


def test_compile_only_reports_costs_without_running(tiny_config):
  """--compile_only: FLOPs, bytes and memory from abstract shapes; no step is run, so no times."""
  tiny_config.rlp.num_labels = 64
  results = benchmark.run(tiny_config, compile_only=True)
  for r in results.values():
    assert "step_s" not in r and r["model_flops_per_step"] > 0 and r["device_memory_bytes"] > 0
  assert results["measure"]["flops_ratio"] > 1.0 and results["measure"]["bytes_ratio"] > 1.0
  assert results["rlp_off"]["rlp_params"] == 0 < results["measure"]["rlp_params"]
  table = benchmark.format_results(tiny_config, results)
  assert "memory GB" in table and "step ms" in table  # empty time columns print as "-"


def test_accelerator_suite_rows_and_table():
  """--suite=accelerator's pieces at tiny shapes: every row of issue 14's table, the head-loss rows timed
  side by side with numerics against ours and autodiff, and what a CPU cannot measure says so."""
  import dataclasses

  from rlp_jax.perf import accelerator_suite as suite

  sh = dataclasses.replace(suite.shapes(False, 1.0), head=(16, 32, 256), head_chunk=64, steps=1)
  names = [(name, lam) for name, lam, _ in suite.step_configs(sh)]
  assert names[0] == ("tiny ViT heads off", 0.0) and len(names) == 9
  assert {lam for _, lam in names[1:]} == {0.0, suite.LAMBDA}
  assert any("chunk" in n for n, _ in names) and any("full logits" in n for n, _ in names)
  rows = suite.head_rows(sh, suite.load_tokamax())
  by = {(r["row"].split(",")[0], r["row"], r["lam"]): r for r in rows}
  timed = [r for r in rows if "time_s" in r]
  assert len(timed) >= 6 and all(r["time_s"] > 0 and r["memory_bytes"] >= 0 for r in timed)
  for r in timed:  # every implementation computes the same loss and gradients
    assert r["diff_autodiff"] < 1e-4 and r["diff_ours"] < 1e-4, r
  autodiff = [r for k, r in by.items() if k[0].startswith("autodiff")]
  assert [r["ratio"] for r in autodiff] == [1.0, 1.0]
  pallas = [r for r in rows if "pallas" in r["row"]]
  assert len(pallas) == 2 and all(r["diff_ours"] < 1e-5 and suite.NOT_MEASURED in r["note"] for r in pallas)
  result = dict(
    device="cpu", platform="cpu", jax="x", tokamax=None, scale=1.0, wall_s=1.0, rows=rows, remaining=["r"]
  )
  table = suite.format_table(result)
  assert table.count("\n| head loss: ") == len(rows) and "| row | λ |" in table
  assert suite.NOT_MEASURED in table  # MFU: a CPU has no peak FLOP/s


def test_accelerator_suite_configs_load_from_any_directory(monkeypatch, tmp_path):
  """The ViT config is found from the package's place, not the working directory; a missing one is a
  one-line UserError."""
  from rlp_jax.infra.errors import UserError
  from rlp_jax.perf import accelerator_suite as suite

  monkeypatch.chdir(tmp_path)
  rows = suite.step_configs(suite.shapes(False, 1.0))
  assert rows[0][2].model.name == "vit" and len(rows) == 9
  monkeypatch.setattr(suite, "__file__", str(tmp_path / "site-packages" / "rlp_jax" / "perf" / "x.py"))
  with pytest.raises(
    UserError, match="configs/vit_imagenet.py: no such config file; run --suite=accelerator"
  ):
    suite.step_configs(suite.shapes(False, 1.0))
