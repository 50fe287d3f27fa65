r"""Step-time cost of RLP heads, measured in one process on synthetic data.

  python -m rlp_jax.benchmark --config=configs/digits.py [--config.KEY=VALUE ...] [--steps=20]
  python -m rlp_jax.benchmark --config=configs/wrn_cifar100.py --input_batches=100   # the input pipeline

For the same model, batch and mesh it compiles and times three train steps: RLP heads off
(``rlp.num_heads=0``, no probes), measurement only (λ = 0) and regularization (λ > 0), and reports
compile time, step time, images/s, their ratios to "off", and model FLOPs utilization (XLA's compiled
cost analysis against the device's peak, where the device is in ``PEAK_FLOPS``).

Numbers come from one run so their ratios are comparable; absolute times on a CPU say little.
"""

from __future__ import annotations

import copy
import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from rlp_jax import input_pipeline, train

# Dense bf16 peak FLOP/s per chip, by a substring of jax.Device.device_kind (first match wins).
PEAK_FLOPS = (
  ("TPU v4", 275e12),
  ("TPU v5 lite", 197e12),
  ("TPU v5e", 197e12),
  ("TPU v5p", 459e12),
  ("TPU v5", 459e12),
  ("TPU v6 lite", 918e12),
  ("TPU v6e", 918e12),
  ("A100", 312e12),
  ("H100", 989e12),
  ("H200", 989e12),
)

# Shapes of datasets that may be absent here (benchmarks need no data): (input shape, classes, m).
KNOWN_DATASETS = {
  "cifar100": ((32, 32, 3), 100, 50_000),
  "cifar10": ((32, 32, 3), 10, 50_000),
  "imagenet2012": ((224, 224, 3), 1000, 1_281_167),
}


def peak_flops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  return next((peak for key, peak in PEAK_FLOPS if key.lower() in kind.lower()), None)


def data_info(config) -> input_pipeline.DataInfo:
  """Dataset shapes without reading data where they are known; otherwise from tfds."""
  name = config.dataset.split("/")[0]
  if name in KNOWN_DATASETS:
    shape, classes, m = KNOWN_DATASETS[name]
    return input_pipeline.DataInfo(
      config.dataset, m, 0, classes, shape, int(np.floor(config.dataset_fraction * m))
    )
  return input_pipeline.get_info(config)


def synthetic_batch(exp, seed: int = 0) -> dict[str, jax.Array]:
  cfg, info = exp.config, exp.info
  rng = np.random.default_rng(seed)
  b = cfg.batch_size // jax.process_count()
  batch = {
    "image": rng.standard_normal((b,) + tuple(info.input_shape)).astype(np.float32),
    "label": rng.integers(0, info.num_classes, b).astype(np.int32),
  }
  if exp.rlp_layers:
    batch["rlp_labels"] = rng.integers(0, exp.num_labels, (b, cfg.rlp.num_heads)).astype(np.int32)
  return train._device_batch(exp, batch)


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):  # older JAX returns one dict per device program
    cost = cost[0] if cost else None
  return float(cost["flops"]) if cost and "flops" in cost else None


def measure(config, info, *, steps: int, warmup: int = 2, repeats: int = 3) -> dict[str, float]:
  """Compile and time one variant; the step time is the best of ``repeats`` means over ``steps`` steps."""
  exp, state = train.build(config, info)
  batch = synthetic_batch(exp)
  step = train.make_train_step(exp)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(warmup):
    state = compiled(state, batch)
  jax.block_until_ready(state)
  means = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      state = compiled(state, batch)
    jax.block_until_ready(state)
    means.append((time.perf_counter() - t0) / steps)
  step_s = min(means)
  flops = _flops(compiled)
  out = {
    "compile_s": compile_s,
    "step_s": step_s,
    "images_per_s": config.batch_size / step_s,
    "flops_per_step": flops,
    "rlp_params": float(sum(x.size for x in jax.tree.leaves(state.params["rlp"]))),
  }
  peak = peak_flops(jax.devices()[0])
  if flops is not None:
    # cost_analysis counts the FLOPs of the per-device program.
    out["tflops_per_s_per_device"] = flops / step_s / 1e12
    if peak:
      out["mfu"] = flops / step_s / peak
  return out


def variants(config):
  """(name, config) for heads off, measurement only (λ = 0) and regularization (λ > 0)."""
  off = copy.deepcopy(config)
  off.rlp.num_heads = 0
  off.probes.layers = ""
  measure_only = copy.deepcopy(config)
  measure_only.rlp.num_heads = max(1, config.rlp.num_heads)
  measure_only.rlp.reg_lambda = 0.0
  reg = copy.deepcopy(measure_only)
  reg.rlp.reg_lambda = config.rlp.reg_lambda if config.rlp.reg_lambda > 0 else 1.0
  return [("rlp_off", off), ("measure", measure_only), ("regularize", reg)]


def run(config, *, steps: int = 20, only: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
  """Measures every variant (or those named in ``only``; ratios need ``rlp_off`` among them)."""
  info = data_info(config)
  results = {
    name: measure(cfg, info, steps=steps) for name, cfg in variants(config) if not only or name in only
  }
  base = results.get("rlp_off")
  if base is None:
    return results
  for r in results.values():
    r["step_time_ratio"] = r["step_s"] / base["step_s"]
    if r["flops_per_step"] and base["flops_per_step"]:
      # The FLOP share of the heads: the step-time ratio should stay close to this.
      r["flops_ratio"] = r["flops_per_step"] / base["flops_per_step"]
  return results


def format_results(config, results) -> str:
  dev = jax.devices()[0]
  n = train.input_pipeline.num_labels(config, data_info(config))
  lines = [
    f"{config.model.name} on {config.dataset}, global batch {config.batch_size}, n = {n}, "
    f"{config.rlp.num_heads} head(s)/layer on {config.rlp.layers!r}; "
    f"{jax.device_count()} x {getattr(dev, 'device_kind', dev.platform)}",
    f"{'variant':<12}{'compile s':>11}{'step ms':>10}{'images/s':>11}{'time ratio':>12}{'FLOP ratio':>12}"
    f"{'TFLOP/s/dev':>13}{'MFU':>8}",
  ]
  for name, r in results.items():
    mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "-"
    tf = f"{r['tflops_per_s_per_device']:.3f}" if "tflops_per_s_per_device" in r else "-"
    fr = f"{r['flops_ratio']:.3f}" if "flops_ratio" in r else "-"
    ratio = f"{r['step_time_ratio']:.3f}" if "step_time_ratio" in r else "-"
    lines.append(
      f"{name:<12}{r['compile_s']:>11.2f}{1e3 * r['step_s']:>10.2f}{r['images_per_s']:>11.1f}"
      f"{ratio:>12}{fr:>12}{tf:>13}{mfu:>8}"
    )
  return "\n".join(lines)


def input_throughput(config, *, num_batches: int = 50, epoch: int = 0) -> dict[str, float]:
  """Examples/s of the real training pipeline (read, decode, augment, batch, attach labels) and the share
  of that time spent attaching labels (hashing the index), which DESIGN §2 wants negligible (< 2%)."""
  info = input_pipeline.get_info(config)
  num_batches = min(num_batches, input_pipeline.steps_per_epoch(config, info))
  it = input_pipeline.train_batches(config, info, epoch)
  next(it)  # pipeline start-up is not throughput
  t0 = time.perf_counter()
  batches = [next(it) for _ in range(num_batches - 1)]
  total = time.perf_counter() - t0
  t0 = time.perf_counter()
  for b in batches:
    input_pipeline.attach_labels(dict(b, label=b["clean_label"]), config, info, epoch)
  labels_s = time.perf_counter() - t0
  examples = sum(len(b["index"]) for b in batches)
  return {
    "examples_per_s": examples / total,
    "label_share": labels_s / total,
    "examples": float(examples),
  }


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_integer("steps", 20, "Timed steps per repeat.")
flags.DEFINE_string("json", "", "Also write the results to this JSON file.")
flags.DEFINE_list("variants", [], "Measure only these of rlp_off, measure, regularize (default: all).")
flags.DEFINE_integer("input_batches", 0, "If > 0, measure the input pipeline over this many batches instead.")


def main(argv):
  del argv
  if FLAGS.input_batches:
    r = input_throughput(FLAGS.config, num_batches=FLAGS.input_batches)
    print(
      f"input pipeline, {FLAGS.config.dataset}: {r['examples_per_s']:.0f} examples/s "
      f"({r['examples']:.0f} examples), attaching labels {100 * r['label_share']:.2f}% of it",
      flush=True,
    )
    return
  results = run(FLAGS.config, steps=FLAGS.steps, only=tuple(FLAGS.variants))
  print(format_results(FLAGS.config, results), flush=True)
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
