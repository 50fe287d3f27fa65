"""Joining a multi-process (multi-host) job: the one call every command line makes before touching JAX.

Cloud TPU pod slices and SLURM jobs are detected by JAX itself (launch/tpu.sh, launch/slurm.sh); any other
cluster (plain ssh, Kubernetes, several processes on one machine) exports ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` for each process.
"""

from __future__ import annotations

import os

import jax
from absl import logging

from rlp_jax.infra.errors import UserError


def is_multihost(env=os.environ) -> bool:
  """True on a multi-process launch: a TPU pod slice, a SLURM job with several tasks, or explicit env."""
  return (
    "JAX_COORDINATOR_ADDRESS" in env
    or int(env.get("SLURM_NTASKS", "1")) > 1
    or "," in env.get("TPU_WORKER_HOSTNAMES", "")
  )


def initialize_args(env=os.environ) -> dict[str, int]:
  """``jax.distributed.initialize`` arguments from ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` where set.

  JAX reads ``JAX_COORDINATOR_ADDRESS`` itself, but not these two.
  """
  args = {}
  for key, name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
    if name in env:
      try:
        args[key] = int(env[name])
      except ValueError:
        raise UserError(
          f"{name}={env[name]!r} must be an integer (this process's place in the job)."
        ) from None
  return args


def initialize() -> None:
  """``jax.distributed.initialize`` when this process is one of several; nothing on a single host."""
  if not is_multihost():
    return
  jax.distributed.initialize(**initialize_args())
  logging.info(
    "Process %d of %d, %d local devices.", jax.process_index(), jax.process_count(), jax.local_device_count()
  )
