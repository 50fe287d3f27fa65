"""Entry point: ``python -m rlp_jax.main --config=configs/<file>.py[:arg] --workdir=DIR [--config.k=v ...]``.

Re-running the same command resumes from the latest checkpoint in DIR.
"""

import logging as pylogging
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from rlp_jax import train

FLAGS = flags.FLAGS
_CHATTY = ("orbax", "tensorflow_datasets", "jax/_src", "absl/logging")
config_flags.DEFINE_config_file(
  "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the config of this run.")
flags.mark_flags_as_required(["config", "workdir"])


def _is_multihost() -> bool:
  """True on a multi-process launch: a TPU pod slice, a SLURM job with several tasks, or explicit env."""
  env = os.environ
  return (
    "JAX_COORDINATOR_ADDRESS" in env
    or int(env.get("SLURM_NTASKS", "1")) > 1
    or "," in env.get("TPU_WORKER_HOSTNAMES", "")
  )


def _distributed_args() -> dict[str, int]:
  """``jax.distributed.initialize`` arguments from ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.

  JAX finds the process count and id itself on Cloud TPU and under SLURM, but not on a cluster it does not
  know (plain ssh, Kubernetes without its plug-in, several processes on one machine); there a launcher
  exports these two next to ``JAX_COORDINATOR_ADDRESS``.
  """
  args = {}
  for key, env in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
    if env in os.environ:
      try:
        args[key] = int(os.environ[env])
      except ValueError:
        raise ValueError(f"{env}={os.environ[env]!r} must be an integer.") from None
  return args


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  # Keep the console to our progress and metrics: Orbax and tfds narrate every file they touch at INFO.
  for handler in pylogging.getLogger().handlers:
    handler.addFilter(lambda r: r.levelno >= pylogging.WARNING or not any(m in r.pathname for m in _CHATTY))
  if _is_multihost():
    # Auto-detects the coordinator on Cloud TPU and SLURM (launch/tpu.sh, launch/slurm.sh).
    jax.distributed.initialize(**_distributed_args())
    logging.info(
      "Process %d of %d, %d local devices.",
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
    )
  result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  print(result["table"], flush=True)


if __name__ == "__main__":
  app.run(main)
