"""Entry point: ``python -m rlp_jax.main --config=configs/<file>.py[:arg] --workdir=DIR [--config.k=v ...]``.

Re-running the same command resumes from the latest checkpoint in DIR.
"""

from absl import app, flags
from ml_collections import config_flags

from rlp_jax.infra import console, errors

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined when run as a command, not on import: every command module can be imported in one process."""
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file (configs/*.py[:arg]). Override any key with --config.KEY=VALUE: every key, "
    "its default and what it does is in rlp_jax/infra/configuration.py (base_config).",
    lock_config=True,
  )
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config of this run.")
  flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not FLAGS.workdir.strip():
    raise errors.UserError("--workdir is empty: name the directory for this run's checkpoints and logs.")
  # Imported here, not at the top: --help answers before JAX, TensorFlow and the models are loaded.
  from rlp_jax.infra import multihost
  from rlp_jax.training import loop, summary

  console.setup()  # our lines on the console; every library line in WORKDIR/logs/train.log
  multihost.initialize()
  result = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(result["table"], flush=True)
  print(summary.explain(FLAGS.workdir, result, FLAGS.config.rlp.label_mode), flush=True)


if __name__ == "__main__":
  define_flags()
  errors.run(main)
