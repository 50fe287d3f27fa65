r"""Step-time cost of RLP heads, measured in one process on synthetic data.

  python -m rlp_jax.benchmark --config=configs/digits.py [--config.KEY=VALUE ...] [--steps=20]
  python -m rlp_jax.benchmark --config=configs/wrn_cifar100.py --input_batches=100   # the input pipeline
  python -m rlp_jax.benchmark --config=configs/vit_imagenet.py:unique --compile_only  # FLOPs, bytes, memory

For the same model, batch and mesh it compiles and times three train steps: RLP heads off
(``rlp.num_heads=0``, no probes), measurement only (λ = 0) and regularization (λ > 0), and reports
compile time, step time, images/s, their ratios to "off", FLOPs per step (matmuls and convolutions
counted in the traced step, flops.py, and XLA's compiled cost analysis, which on GPU misses the cuBLAS
calls and everywhere counts a while loop's body once, e.g. one label chunk), bytes moved and device
memory (XLA's analyses), and model FLOPs utilization against the device's peak where the device is in
``PEAK_FLOPS``. ``--compile_only`` reports the compiled costs from abstract
shapes without running a step: it sizes a configuration (the 1B-parameter unique-label head, say) on a
machine that cannot hold it.

Numbers come from one run so their ratios are comparable; absolute times on a CPU say little.
"""

from __future__ import annotations

import copy
import time

import jax
import numpy as np

from rlp_jax.data import input_pipeline, labels
from rlp_jax.perf import flops
from rlp_jax.training import experiment as experiment_lib
from rlp_jax.training.steps import make_train_step

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

# Shapes of datasets that may be absent here (benchmarks need no data): (input shape, classes, m, test).
KNOWN_DATASETS = {
  "cifar100": ((32, 32, 3), 100, 50_000, 10_000),
  "cifar10": ((32, 32, 3), 10, 50_000, 10_000),
  "imagenet2012": ((224, 224, 3), 1000, 1_281_167, 50_000),
}


# Memory per chip (HBM), by the same keys; A100 taken as its 80 GB model.
HBM_BYTES = (
  ("TPU v4", 32e9),
  ("TPU v5 lite", 16e9),
  ("TPU v5e", 16e9),
  ("TPU v5p", 95e9),
  ("TPU v5", 95e9),
  ("TPU v6 lite", 32e9),
  ("TPU v6e", 32e9),
  ("A100", 80e9),
  ("H100", 80e9),
  ("H200", 141e9),
)


def _kind_key(kind: str) -> str:
  """'TPU v5p', 'v5p' and 'tpu-v5p' alike: lower case without 'tpu', spaces and dashes."""
  return kind.lower().replace("tpu", "").replace(" ", "").replace("-", "")


def peak_flops(device) -> float | None:
  """Dense bf16 peak FLOP/s of a device, or of a device kind given as a string ('H100', 'v5p')."""
  return _lookup(PEAK_FLOPS, device)


def hbm_bytes(device) -> float | None:
  """Memory (HBM) of one chip, by device or kind as ``peak_flops`` takes them."""
  return _lookup(HBM_BYTES, device)


def _lookup(table, device) -> float | None:
  kind = _kind_key(device if isinstance(device, str) else getattr(device, "device_kind", ""))
  return next((value for key, value in table if kind and _kind_key(key) in kind), None)


def data_info(config) -> input_pipeline.DataInfo:
  """Dataset shapes without reading data where they are known; otherwise from tfds."""
  name = config.dataset.split("/")[0]
  if name in KNOWN_DATASETS:
    shape, classes, m, test = KNOWN_DATASETS[name]
    return input_pipeline.DataInfo(
      config.dataset, m, test, classes, shape, labels.exact_count(config.dataset_fraction, m)
    )
  return input_pipeline.get_info(config)


def synthetic_batch(experiment, seed: int = 0, *, abstract: bool = False) -> dict[str, jax.Array]:
  cfg, info = experiment.config, experiment.info
  rng = np.random.default_rng(seed)
  b = cfg.batch_size // jax.process_count()
  batch = {
    "image": rng.standard_normal((b,) + tuple(info.input_shape)).astype(np.float32),
    "label": rng.integers(0, info.num_classes, b).astype(np.int32),
  }
  if experiment.rlp_layers:
    batch["rlp_labels"] = rng.integers(0, experiment.num_labels, (b, cfg.rlp.num_heads)).astype(np.int32)
  if abstract:
    sh = experiment.data_sharding
    return {
      k: jax.ShapeDtypeStruct((cfg.batch_size,) + v.shape[1:], v.dtype, sharding=sh) for k, v in batch.items()
    }
  return experiment_lib.device_batch(experiment, batch)


def compiled_costs(compiled) -> dict[str, float]:
  """FLOPs and bytes accessed per step, and the program's device memory.

  FLOPs and bytes come from XLA's cost analysis of the per-device program; the device memory is
  arguments + outputs - donated aliases + temporaries.
  """
  cost = compiled.cost_analysis()
  if isinstance(cost, list | tuple):  # older JAX returns one dict per device program
    cost = cost[0] if cost else None
  cost = cost or {}
  out = {
    "flops_per_step": float(cost["flops"]) if "flops" in cost else None,
    "bytes_per_step": float(cost["bytes accessed"]) if "bytes accessed" in cost else None,
  }
  mem = compiled.memory_analysis()
  if mem is not None:
    out["device_memory_bytes"] = float(
      mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes + mem.temp_size_in_bytes
    )
  return out


def compile_step(config, info, *, abstract: bool = False):
  """(experiment, state, batch, compiled train step, compile seconds); ``abstract`` allocates nothing."""
  experiment, state = experiment_lib.build(config, info, abstract=abstract)
  batch = synthetic_batch(experiment, abstract=abstract)
  step = make_train_step(experiment)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  return experiment, state, batch, compiled, time.perf_counter() - t0


def measure(config, info, *, steps: int, warmup: int = 2, repeats: int = 3, compile_only: bool = False):
  """Compile and time one variant; the step time is the best of ``repeats`` means over ``steps`` steps.

  ``compile_only``: compile from abstract shapes and report the compiled program's costs without running
  it — how to size a configuration (a 1B-parameter head, say) on a machine that cannot hold it.
  """
  experiment, state, batch, compiled, compile_s = compile_step(config, info, abstract=compile_only)
  out = {
    "compile_s": compile_s,
    "rlp_params": float(sum(x.size for x in jax.tree.leaves(state.params["rlp"]))),
    # Matmul + convolution FLOPs per device, counted in the traced step (flops.py: XLA's own count
    # omits the cuBLAS/cuDNN calls on GPU and counts loop bodies once, so MFU and FLOP ratios use this).
    "model_flops_per_step": flops.count(make_train_step(experiment), state, batch) / jax.device_count(),
    **compiled_costs(compiled),
  }
  if compile_only:
    return out
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
  out.update(step_s=step_s, images_per_s=config.batch_size / step_s)
  out["tflops_per_s_per_device"] = out["model_flops_per_step"] / step_s / 1e12
  peak = peak_flops(jax.devices()[0])
  if peak:
    out["mfu"] = out["model_flops_per_step"] / step_s / peak
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


def run(
  config, *, steps: int = 20, only: tuple[str, ...] = (), compile_only: bool = False
) -> dict[str, dict[str, float]]:
  """Measures every variant (or those named in ``only``; ratios need ``rlp_off`` among them)."""
  info = data_info(config)
  results = {
    name: measure(cfg, info, steps=steps, compile_only=compile_only)
    for name, cfg in variants(config)
    if not only or name in only
  }
  base = results.get("rlp_off")
  if base is None:
    return results
  for r in results.values():
    if "step_s" in r:
      r["step_time_ratio"] = r["step_s"] / base["step_s"]
    # The heads' share of the work: the step-time ratio should stay close to these.
    for key, ratio in (("model_flops_per_step", "flops_ratio"), ("bytes_per_step", "bytes_ratio")):
      if r.get(key) and base.get(key):
        r[ratio] = r[key] / base[key]
  return results


def _fmt(r, key, spec, scale=1.0, suffix=""):
  return format(scale * r[key], spec) + suffix if r.get(key) is not None else "-"


def format_results(config, results) -> str:
  dev = jax.devices()[0]
  n = input_pipeline.num_labels(config, data_info(config))
  columns = (  # header, key, format, scale, suffix
    ("compile s", "compile_s", ".2f", 1, ""),
    ("step ms", "step_s", ".2f", 1e3, ""),
    ("images/s", "images_per_s", ".1f", 1, ""),
    ("time ratio", "step_time_ratio", ".3f", 1, ""),
    ("FLOP ratio", "flops_ratio", ".3f", 1, ""),
    ("byte ratio", "bytes_ratio", ".3f", 1, ""),
    ("GFLOP", "model_flops_per_step", ".1f", 1e-9, ""),
    ("XLA GFLOP", "flops_per_step", ".1f", 1e-9, ""),
    ("GB moved", "bytes_per_step", ".2f", 1e-9, ""),
    ("memory GB", "device_memory_bytes", ".2f", 1e-9, ""),
    ("TFLOP/s/dev", "tflops_per_s_per_device", ".3f", 1, ""),
    ("MFU", "mfu", ".1f", 100, "%"),
  )
  lines = [
    f"{config.model.name} on {config.dataset}, global batch {config.batch_size}, n = {n}, "
    f"{config.rlp.num_heads} head(s)/layer on {config.rlp.layers!r}; "
    f"{jax.device_count()} x {getattr(dev, 'device_kind', dev.platform)}",
    f"{'variant':<12}" + "".join(f"{h:>{max(len(h) + 2, 10)}}" for h, *_ in columns),
  ]
  for name, r in results.items():
    lines.append(
      f"{name:<12}"
      + "".join(f"{_fmt(r, k, f, sc, sf):>{max(len(h) + 2, 10)}}" for h, k, f, sc, sf in columns)
    )
  return "\n".join(lines)


def input_throughput(config, *, num_batches: int = 50, epoch: int = 0) -> dict[str, float]:
  """Examples/s of the real training pipeline and the share of that time spent attaching labels.

  The pipeline reads, decodes, augments, batches and attaches labels; attaching labels (hashing the index)
  is what docs/design.md §2 wants negligible (< 2%).
  """
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
