r"""Step-time cost of RLP heads, measured in one process on synthetic data (what and how: perf/benchmark.py).

python -m rlp_jax.benchmark --config=configs/digits.py [--config.KEY=VALUE ...] [--steps=20]
python -m rlp_jax.benchmark --config=configs/wrn_cifar100.py --input_batches=100   # the input pipeline
python -m rlp_jax.benchmark --config=configs/vit_imagenet.py --input_per_core=640 --config.batch_size=32 \
    --config.eval.batch_size=32 --steps=16   # images/s per host core (also configs/wrn_cifar100.py)
python -m rlp_jax.benchmark --config=configs/vit_imagenet.py:unique --compile_only  # FLOPs, bytes, memory
python -m rlp_jax.benchmark --suite=accelerator [--scale=S] [--json=PATH]  # perf/accelerator_suite.py
"""

from __future__ import annotations

import json
import time

from absl import app, flags
from ml_collections import config_flags

from rlp_jax.infra import console, errors, rundir
from rlp_jax.perf import benchmark

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
  flags.DEFINE_integer("steps", 20, "Timed steps per repeat.", lower_bound=1)
  flags.DEFINE_string("json", "", "Also write the results to this JSON file.")
  flags.DEFINE_list("variants", [], "Measure only these of rlp_off, measure, regularize (default: all).")
  flags.register_validator(
    "variants",
    lambda names: set(names) <= {"rlp_off", "measure", "regularize"},
    message="--variants: must name some of rlp_off, measure, regularize (comma-separated).",
  )
  flags.DEFINE_integer(
    "input_batches", 0, "If > 0, measure the input pipeline over this many batches instead."
  )
  flags.DEFINE_integer(
    "input_per_core",
    0,
    "If > 0, write this many train images shaped like config.dataset's (imagenet2012: JPEGs of ImageNet's "
    "sizes, and their copy resized once to the eval resize; cifar100: 32x32 PNGs; perf/input_cost.py) and "
    "print images/s on one core of each train and eval transform against the bare decode of those records.",
    lower_bound=0,
  )
  flags.DEFINE_bool(
    "compile_only",
    False,
    "Compile from abstract shapes and report FLOPs, bytes moved and device memory without running a step "
    "(sizes a configuration this machine cannot hold).",
  )
  flags.DEFINE_enum(
    "io",
    "",
    ["", "save", "prefetch"],
    "Instead: step time while a checkpoint is written vs not (save), or with device prefetch vs without "
    "(prefetch, on the real input pipeline).",
  )
  flags.DEFINE_enum(
    "suite",
    "",
    ["", "accelerator"],
    "Instead: the whole accelerator table (steps with and without heads, the head loss against autodiff, "
    "the Pallas kernel and tokamax), printed as Markdown and written as JSON (--json, default "
    "accelerator_suite_<platform>_<time>.json). Uses configs/vit_imagenet.py; no --config.",
  )
  flags.DEFINE_float("scale", 0.0, "--suite: scales the label counts (0: 1 on an accelerator, 0.125 on CPU).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()
  if FLAGS.suite:
    return _suite()
  if FLAGS.config is None:
    raise errors.UserError(
      "--config: required (e.g. --config=configs/digits.py), unless --suite=accelerator."
    )
  if FLAGS.io:
    from rlp_jax.perf import io_cost

    if FLAGS.io == "save":
      r = io_cost.save_cost(FLAGS.config, steps=FLAGS.steps)
      line = (
        f"step {1e3 * r['step_s']:.2f} ms, {1e3 * r['step_s_while_saving']:.2f} ms while a "
        f"{r['checkpoint_bytes'] / 1e6:.1f} MB checkpoint is written: ratio {r['ratio']:.3f}"
      )
    else:
      r = io_cost.prefetch_gain(FLAGS.config, num_batches=FLAGS.steps)
      line = (
        f"step {1e3 * r['step_s_no_prefetch']:.2f} ms without prefetch, {1e3 * r['step_s_prefetch']:.2f} ms "
        f"with: ratio {r['ratio']:.3f}"
      )
    print(f"{FLAGS.config.model.name} on {FLAGS.config.dataset}: {line}", flush=True)
    if FLAGS.json:
      rundir.atomic_write(FLAGS.json, json.dumps(r, indent=2))
    return
  if FLAGS.input_per_core:
    return _input_per_core()
  if FLAGS.input_batches:
    r = benchmark.input_throughput(FLAGS.config, num_batches=FLAGS.input_batches)
    print(
      f"input pipeline, {FLAGS.config.dataset}: {r['examples_per_s']:.0f} examples/s "
      f"({r['examples']:.0f} examples), attaching labels {100 * r['label_share']:.2f}% of it",
      flush=True,
    )
    return
  results = benchmark.run(
    FLAGS.config, steps=FLAGS.steps, only=tuple(FLAGS.variants), compile_only=FLAGS.compile_only
  )
  print(benchmark.format_results(FLAGS.config, results), flush=True)
  if FLAGS.json:
    rundir.atomic_write(FLAGS.json, json.dumps(results, indent=2))


def _input_per_core() -> None:
  import tempfile

  from rlp_jax.perf import input_cost

  config, n = FLAGS.config, FLAGS.input_per_core
  with tempfile.TemporaryDirectory() as tmp:
    rows = input_cost.per_core(config, input_cost.write_data(config, tmp, n), num_batches=FLAGS.steps)
  print(
    f"images/s on one core, {config.batch_size} per batch ({n} train images of {config.dataset}'s shape):"
  )
  first = rows[0]["data"]
  for r in rows:
    print(
      f"  {r['data']:11s} {r['transform']:37s} pipeline {r['images_per_s']:6.0f}  bare decode "
      f"{r['ceiling']:6.0f}  ratio {r['ratio']:.2f}"
      + (f"  {r['vs_first_data']:.2f}x {first}" if r["data"] != first else "")
      + f"  ({r['batches']} batches within one pass)",
      flush=True,
    )
  if FLAGS.json:
    rundir.atomic_write(FLAGS.json, json.dumps(rows, indent=2))


def _suite() -> None:
  from rlp_jax.perf import accelerator_suite

  if FLAGS["config"].present:
    raise errors.UserError(
      "--config: --suite=accelerator runs its own configs (configs/vit_imagenet.py); drop it."
    )
  if FLAGS.scale < 0:
    raise errors.UserError(f"--scale: must be > 0 (or 0 for the platform's default), got {FLAGS.scale}.")
  import jax

  path = FLAGS.json or f"accelerator_suite_{jax.default_backend()}_{time.strftime('%Y%m%d-%H%M%S')}.json"
  result = accelerator_suite.run(FLAGS.scale)
  print(accelerator_suite.format_table(result), flush=True)
  rundir.atomic_write(path, json.dumps(result, indent=2))
  print(f"\nwritten: {path}", flush=True)


if __name__ == "__main__":
  define_flags()
  errors.run(main)
