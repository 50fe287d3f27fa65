"""The device mesh: axis names, its construction from config.mesh, and a version-proof ``shard_map``.

Mesh axes (docs/design.md §5): ``data`` splits the batch; ``model`` splits the *label* axis of large RLP
heads. With one label per example (ImageNet, n = m = 1,281,167) a head is ~1B parameters and its logits a
B × 1.28M matrix per step; sharding the label axis over ``model`` devices divides both. The head's loss
is then computed from per-shard statistics (heads/head_loss.py), so the full logits never exist on one
device.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from rlp_jax.infra.errors import UserError

try:  # jax >= 0.7 exports shard_map at the top level; older versions keep it in experimental.
  from jax import shard_map as _shard_map

  _CHECK_KW = "check_vma"
except ImportError:  # pragma: no cover - depends on the installed JAX
  from jax.experimental.shard_map import shard_map as _shard_map

  _CHECK_KW = "check_rep"

DATA, MODEL = "data", "model"


def make_mesh(mesh_config: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A ('data', 'model') mesh; -1 on one axis takes all remaining devices."""
  devices = np.asarray(devices if devices is not None else jax.devices())
  data, model = int(mesh_config.data), int(mesh_config.model)
  n = devices.size
  if data == -1 and model == -1:
    raise UserError("config.mesh: at most one of data, model may be -1.")
  if data == -1:
    data = n // model if model > 0 and n % model == 0 else 0
  if model == -1:
    model = n // data if data > 0 and n % data == 0 else 0
  if data < 1 or model < 1 or data * model != n:
    raise UserError(
      f"config.mesh: data={mesh_config.data}, model={mesh_config.model} does not fit the {n} "
      f"devices; use data * model = {n} (or -1 on one axis)."
    )
  hosts = len({d.process_index for d in devices.flat})
  if data % hosts:
    # Each host reads its own examples; a data-axis entry spanning hosts would need the same rows on both.
    raise UserError(
      f"config.mesh: data={data} is not a multiple of the {hosts} hosts: each host reads its own slice of "
      f"the batch, so the model axis must stay within a host (model <= {n // hosts} devices per host)."
    )
  return Mesh(devices.reshape(data, model), (DATA, MODEL))


def label_sharded(mesh: Mesh | None) -> bool:
  return mesh is not None and mesh.shape[MODEL] > 1


def shard_map(f, *, mesh: Mesh, in_specs, out_specs):
  """``jax.shard_map`` without the replication check (its keyword differs across JAX versions).

  Used only for functions that are never differentiated through (head_loss has its own VJP, itself a
  shard_map), so the check's autodiff semantics do not matter.
  """
  return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **{_CHECK_KW: False})
