r"""Plan a run before launching it — memory, FLOPs, checkpoint storage, device-hours — from shapes alone:

  python -m rlp_jax.plan --config=configs/vit_imagenet.py:unique --devices=8 --device_kind=H100 [--mfu=0.4]
      [--config.KEY=VALUE ...]

``--devices=N`` simulates N devices on this machine's CPU when it has no accelerator. What each figure
means: perf/plan.py.
"""

from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from rlp_jax.infra import console, errors, rundir

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:arg]).")
  flags.DEFINE_integer(
    "devices", 0, "Simulate this many CPU devices (0 = the devices this machine has).", lower_bound=0
  )
  flags.DEFINE_string("device_kind", "", "Device whose dense bf16 peak sets the device-hours, e.g. H100.")
  flags.DEFINE_float("peak_tflops", 0.0, "Or the peak itself, in TFLOP/s per device.", lower_bound=0.0)
  flags.DEFINE_float(
    "mfu", 0.4, "Assumed model FLOPs utilization for the device-hours.", lower_bound=0.01, upper_bound=1.0
  )
  flags.DEFINE_integer(
    "devices_per_host", 8, "Accelerators one host feeds (8: a GPU node; 4: a TPU v5p host).", lower_bound=1
  )
  flags.DEFINE_float(
    "input_rate_per_core",
    0.0,
    "Images/s one host CPU core decodes and augments for this config, as measured by "
    "`python -m rlp_jax.benchmark --config=... --input_per_core=N` on the target's host (0 = this project's "
    "measurement on one core of its development machine, perf/plan.py MEASURED_PER_CORE).",
    lower_bound=0.0,
  )
  flags.DEFINE_integer("host_cores", 0, "CPU cores of one host, to flag an input-bound run.", lower_bound=0)
  flags.DEFINE_string("json", "", "Also write the plan to this JSON file.")
  flags.mark_flags_as_required(["config"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()
  if FLAGS.devices:
    # Read when JAX starts its CPU backend, which has not happened yet: nothing has asked for a device.
    os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={FLAGS.devices}"
    )
  import jax

  from rlp_jax.perf import benchmark, plan

  devices = jax.devices()[: FLAGS.devices] if FLAGS.devices else None
  peak = FLAGS.peak_tflops * 1e12 if FLAGS.peak_tflops else None
  if FLAGS.device_kind and not peak:
    peak = benchmark.peak_flops(FLAGS.device_kind)
    if peak is None:
      known = ", ".join(k for k, _ in benchmark.PEAK_FLOPS)
      raise app.UsageError(f"--device_kind={FLAGS.device_kind!r} is not one of {known}; use --peak_tflops.")
  result = plan.plan(
    FLAGS.config, devices=devices, peak_flops=peak, mfu=FLAGS.mfu, device_kind=FLAGS.device_kind
  )
  result.update(
    plan.host_input(
      result,
      FLAGS.config.batch_size,
      devices_per_host=FLAGS.devices_per_host,
      rate_per_core=FLAGS.input_rate_per_core or None,
      host_cores=FLAGS.host_cores or None,
      transform=plan.train_transform(FLAGS.config),
    )
  )
  print(plan.format_plan(FLAGS.config, result), flush=True)
  if FLAGS.json:
    rundir.atomic_write(FLAGS.json, json.dumps(result, indent=2))


if __name__ == "__main__":
  define_flags()
  errors.run(main)
