"""Feldman-Zhang memorization of every training example, by training many models on random subsets:

  python -m rlp_jax.ground_truth --config=configs/digits.py --output=DIR/ground_truth.npz
      [--num_models=128] [--subset=0.7] [--models_per_step=32] [--config.KEY=VALUE ...]

The models are the config's own (model, optimizer, epochs, labels and label noise); what is estimated and
written: analysis/ground_truth.py. Correlate it with a run's RLP scores:
``python -m rlp_jax.memorization --workdir=RUN --ground_truth=DIR/ground_truth.npz``.
"""

from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from rlp_jax.analysis import ground_truth, ground_truth_stats
from rlp_jax.infra import configuration, console, errors

FLAGS = flags.FLAGS


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
  )
  flags.DEFINE_string("output", None, "The .npz to write (a new file; its directory is created).")
  flags.DEFINE_integer("num_models", 128, "Models trained, each on its own random subset.", lower_bound=2)
  flags.DEFINE_float("subset", 0.7, "Share of the trained-on examples each model sees.", lower_bound=0.0)
  flags.register_validator(
    "subset", lambda v: 0.0 < v < 1.0, message="--subset: must lie in (0, 1), e.g. 0.7."
  )
  flags.DEFINE_integer(
    "models_per_step", 32, "Models trained together as one vectorized model.", lower_bound=1
  )
  flags.mark_flags_as_required(["config", "output"])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  output = FLAGS.output
  if not output.endswith(".npz"):
    raise errors.UserError(
      f"--output={output!r}: must name a .npz file, e.g. --output=/tmp/gt/ground_truth.npz."
    )
  if os.path.exists(output):
    raise errors.UserError(f"--output={output}: the file exists; name a new file (nothing was changed).")
  configuration.validate(FLAGS.config)
  console.setup()
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  out = ground_truth.compute(
    FLAGS.config,
    output,
    num_models=FLAGS.num_models,
    rate=FLAGS.subset,
    models_per_step=FLAGS.models_per_step,
    log=lambda s: print(s, flush=True),
  )
  print(ground_truth_stats.describe(out), flush=True)
  print(f"ground truth: {output}", flush=True)


if __name__ == "__main__":
  define_flags()
  errors.run(main)
