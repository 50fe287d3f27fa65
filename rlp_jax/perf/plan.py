"""A whole run planned from abstract shapes: what it holds, computes, writes and costs (docs/design.md §5).

Nothing is allocated and no data is read: the state comes from ``experiment.build(abstract=True)`` and the
train step is compiled for the configured mesh, so a 1B-parameter head on an 8-chip mesh is sized in
seconds on a laptop (simulate the devices with ``--devices=8``). For the run as configured it reports:

- parameters per group (backbone + class head, RLP heads, class probes);
- per-device memory of the compiled train step (XLA's memory analysis: arguments + outputs - donated +
  temporaries);
- FLOPs per step (matmuls and convolutions counted in the traced step, perf/flops.py) and per run
  (training steps only), and of one evaluation, with its share of an epoch's FLOPs (offline heads come on
  top);
- bytes of one resume checkpoint (the whole TrainState) and of one analysis snapshot
  (training/checkpointing.py), how many of each the run keeps, and the storage that makes;
- device-hours at an assumed MFU, given the device's peak.

Checkpoint bytes are the arrays' own bytes; Orbax adds a few kB of metadata per checkpoint and may
compress (random-looking weights barely compress).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlp_jax.perf import benchmark, flops
from rlp_jax.training import checkpointing, evaluators
from rlp_jax.training import experiment as experiment_lib
from rlp_jax.training.steps import make_train_step


def tree_bytes(tree) -> int:
  return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def tree_size(tree) -> int:
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(tree)))


def eval_flops(experiment, state) -> dict[str, float]:
  """FLOPs of one evaluation as the loop runs it (training/evaluators.Evaluator), counted like a step's.

  The train subset (``eval.train_examples``; every example if < 1) goes through the network and the RLP heads
  and probes; the test set through the network and the probes. Whole batches of ``eval.batch_size``, as the
  loop pads them.
  """
  cfg, info = experiment.config, experiment.info
  ev = evaluators.Evaluator(experiment)
  b = cfg.eval.batch_size
  sds = jax.ShapeDtypeStruct
  image = sds((b, *info.input_shape), jnp.float32)
  model_params, stats = state.params["model"], state.batch_stats
  features = flops.count(ev.features.fn, model_params, stats, image)
  logits, feats = jax.eval_shape(ev.features.fn, model_params, stats, image)
  batch = {"mask": sds((b,), jnp.bool_), "label": sds((b,), jnp.int32)}
  test_sums = flops.count(ev.sums, state.params, logits, feats, batch)
  if experiment.rlp_layers:
    batch["rlp_labels"] = sds((b, cfg.rlp.num_heads), jnp.int32)
  train_sums = flops.count(ev.sums, state.params, logits, feats, batch)
  subset = cfg.eval.train_examples
  n_train = info.num_selected if subset is None or subset < 1 else min(subset, info.num_selected)
  batches_train, batches_test = math.ceil(n_train / b), math.ceil(info.num_test / b)
  return {
    "eval_train_examples": n_train,
    "eval_test_examples": info.num_test,
    "flops_per_eval": batches_train * (features + train_sums) + batches_test * (features + test_sums),
  }


def plan(
  config, *, devices=None, peak_flops: float | None = None, mfu: float = 0.4, device_kind: str = ""
) -> dict[str, Any]:
  """The plan of the run ``config`` describes, on ``devices`` (default: all).

  ``device_kind`` (e.g. 'H100', 'v5p') is the target: its memory is compared with the compiled step's.
  """
  info = benchmark.data_info(config)
  experiment, state = experiment_lib.build(config, info, devices, abstract=True)
  batch = benchmark.synthetic_batch(experiment, abstract=True)
  step_fn = make_train_step(experiment)
  compiled = step_fn.lower(state, batch).compile()
  costs = benchmark.compiled_costs(compiled)
  step_flops = float(flops.count(step_fn, state, batch))
  resume_epochs = checkpointing.resume_epochs(config)
  snapshot_epochs = checkpointing.snapshot_epochs(config)
  resume_bytes = tree_bytes(state)
  snapshot_bytes = tree_bytes(checkpointing.snapshot_of(state, heads=config.checkpoint.snapshot_heads))
  kept_resume = min(config.checkpoint.keep, len(resume_epochs))
  evaluation = eval_flops(experiment, state)
  epoch_train = step_flops * experiment.total_steps / config.num_epochs
  epoch_eval = evaluation["flops_per_eval"] / config.eval.every_epochs
  out: dict[str, Any] = {
    "devices": experiment.mesh.size,
    "mesh": dict(experiment.mesh.shape),
    "device_kind": getattr(experiment.mesh.devices.flat[0], "device_kind", ""),
    "params": {g: tree_size(state.params[g]) for g in ("model", "rlp", "probes")},
    "device_memory_bytes": costs.get("device_memory_bytes"),
    "compiled_for": jax.default_backend(),  # the backend whose compiler sized that memory
    "target_kind": device_kind,
    "target_hbm_bytes": benchmark.hbm_bytes(device_kind) if device_kind else None,
    "flops_per_step": step_flops,
    "steps": experiment.total_steps,
    "flops_per_run": step_flops * experiment.total_steps,
    **evaluation,
    # The evaluators' share of an epoch's FLOPs (training steps + evaluations, averaged over epochs).
    "eval_share": epoch_eval / (epoch_train + epoch_eval),
    "resume_checkpoint_bytes": resume_bytes,
    "resume_checkpoints_kept": kept_resume,
    "snapshot_bytes": snapshot_bytes,
    "snapshots": len(snapshot_epochs),
    "storage_bytes": kept_resume * resume_bytes + len(snapshot_epochs) * snapshot_bytes,
    # What the run would write if every checkpoint were a full, kept resume state (the old policy).
    "storage_bytes_all_full": (len(resume_epochs) + 1) * resume_bytes,
    "mfu": mfu,
    "peak_flops_per_device": peak_flops,
  }
  if peak_flops:
    out["device_hours"] = out["flops_per_run"] / (peak_flops * mfu) / 3600
    out["wall_hours"] = out["device_hours"] / experiment.mesh.size
  return out


# Images/s one host CPU core supplies to a run's train transform, as measured by `python -m rlp_jax.benchmark
# --input_per_core` on one core of this project's development machine (an AMD EPYC, 2026-12-07, docs/design.md
# §5): (full-size JPEGs, their copy resized once to the eval resize by resize_dataset). The default of the
# planner's host line; the target host's own measurement (--input_rate_per_core) replaces it.
MEASURED_PER_CORE = {
  "inception": (763.0, 1291.0),  # Inception crop + flip: decode_and_crop_jpeg of the box, resize
  "resize": (291.0, 1424.0),  # :flip_only, and eval: the whole JPEG decoded, shorter side to 256, crop
  "decoded": (5710.0, None),  # fixed-size images (CIFAR-100): tfds decodes the PNGs as it reads
}
_TRANSFORM_NAMES = {
  "inception": "the Inception crop of full-size JPEGs",
  "resize": "the resize + central crop of full-size JPEGs",
  "decoded": "fixed-size images",
}


def train_transform(config) -> str:
  """Which of MEASURED_PER_CORE a config's training reads with."""
  if config.augment.crop == "inception":
    return "inception"
  return "resize" if config.augment.eval_resize else "decoded"


def host_input(
  p: dict[str, Any],
  batch_size: int,
  *,
  devices_per_host: int,
  rate_per_core: float | None = None,
  host_cores: int | None = None,
  transform: str | None = None,
) -> dict[str, Any]:
  """What one host's input pipeline must supply to keep its accelerators at the planned step time.

  The step time is the plan's FLOPs per step over the devices' peak at the assumed MFU; the images/s per
  host are the batch share of ``devices_per_host`` devices over that time. At a per-core rate (the target's
  own, measured with benchmark --input_per_core, or else this project's measurement of ``transform``), the
  cores that takes, and whether the input would bound the run (more cores than ``host_cores``). Empty
  without a peak: there is no step time to feed.
  """
  peak = p.get("peak_flops_per_device")
  if not peak:
    return {}
  step_s = p["flops_per_step"] / (p["devices"] * peak * p["mfu"])
  per_host = batch_size / step_s * min(devices_per_host, p["devices"]) / p["devices"]
  out: dict[str, Any] = {
    "step_seconds": step_s,
    "devices_per_host": min(devices_per_host, p["devices"]),
    "host_images_per_s": per_host,
  }
  if not rate_per_core and transform in MEASURED_PER_CORE:
    rate_per_core, resized = MEASURED_PER_CORE[transform]
    out["input_rate_measured_here"] = transform
    if resized:
      out["host_cores_needed_resized"] = per_host / resized
  if rate_per_core:
    out["input_rate_per_core"] = rate_per_core
    out["host_cores_needed"] = per_host / rate_per_core
    if host_cores:
      out["host_cores"] = host_cores
      out["input_bound"] = out["host_cores_needed"] > host_cores
  return out


def _host_lines(p: dict[str, Any]) -> list[str]:
  if "host_images_per_s" not in p:
    return []
  line = (
    f"  host input        {p['host_images_per_s']:,.0f} images/s per host ({p['devices_per_host']} devices "
    f"at {p['step_seconds'] * 1e3:,.1f} ms per step)"
  )
  if "host_cores_needed" not in p:
    return [line + "; pass --input_rate_per_core (benchmark --input_per_core) for the cores it takes"]
  lines = [
    line + f": {p['host_cores_needed']:,.1f} cores at {p['input_rate_per_core']:,.0f} images/s per core"
  ]
  if "input_rate_measured_here" in p:
    note = f"{_TRANSFORM_NAMES[p['input_rate_measured_here']]}, measured on one core here"
    if "host_cores_needed_resized" in p:
      note += f"; {p['host_cores_needed_resized']:,.1f} cores on a copy resized once (resize_dataset)"
    lines.append(f"                    ({note}; --input_rate_per_core for the target's own)")
  if p.get("input_bound"):
    lines.append(f"  WARNING           input-bound: more than the host's {p['host_cores']} cores")
  return lines


def _gb(x) -> str:
  return "-" if x is None else f"{x / 1e9:,.2f} GB"


def _fits(p: dict[str, Any]) -> list[str]:
  """The memory line against the target's HBM, when a target is named and the memory is known."""
  hbm, need = p.get("target_hbm_bytes"), p.get("device_memory_bytes")
  if not hbm or need is None:
    return []
  kind = p["target_kind"]
  if need > hbm:
    return [f"  WARNING           does not fit: {_gb(need)} per device > {_gb(hbm)} HBM of a {kind}"]
  return [f"                    fits a {kind}'s {_gb(hbm)} HBM ({need / hbm:.0%} of it)"]


def format_plan(config, p: dict[str, Any]) -> str:
  n = p["params"]
  lines = [
    f"{config.model.name} on {config.dataset}: {p['steps']:,} steps ({config.num_epochs} epochs, batch "
    f"{config.batch_size}); mesh {p['mesh']} of {p['devices']} x {p['device_kind'] or 'device'}",
    f"  parameters        backbone {n['model']:,}  RLP heads {n['rlp']:,}  probes {n['probes']:,}",
    f"  device memory     {_gb(p['device_memory_bytes'])} per device: the train step as XLA compiles it "
    f"for {p['compiled_for']} here (the target's compiler fuses and lays out differently: an estimate)",
    *_fits(p),
    f"  FLOPs             {p['flops_per_step'] / 1e12:,.2f} TFLOP per step, "
    f"{p['flops_per_run'] / 1e18:,.3f} EFLOP per run (training steps)",
    f"  evaluation        {p['flops_per_eval'] / 1e12:,.2f} TFLOP each ({p['eval_train_examples']:,} "
    f"training examples, {p['eval_test_examples']:,} test): {p['eval_share']:.1%} of an epoch's FLOPs",
    f"  resume checkpoint {_gb(p['resume_checkpoint_bytes'])} each, last {p['resume_checkpoints_kept']} kept",
    f"  analysis snapshot {_gb(p['snapshot_bytes'])} each, {p['snapshots']} kept",
    f"  storage           resume states {p['resume_checkpoints_kept']} x "
    f"{_gb(p['resume_checkpoint_bytes'])} + snapshots {p['snapshots']} x {_gb(p['snapshot_bytes'])} "
    f"= {_gb(p['storage_bytes'])} "
    f"(keeping every checkpoint as a full resume state would take {_gb(p['storage_bytes_all_full'])})",
  ]
  if "device_hours" in p:
    lines.append(
      f"  compute           {p['device_hours']:,.1f} device-hours ({p['wall_hours']:,.2f} h on this mesh) "
      f"at {p['mfu']:.0%} MFU of {p['peak_flops_per_device'] / 1e12:,.0f} TFLOP/s per device"
    )
  else:
    lines.append("  compute           device-hours: pass --device_kind (e.g. H100) or --peak_tflops")
  return "\n".join(lines + _host_lines(p))
