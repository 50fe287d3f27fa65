"""Device mesh and the shardings of the train state.

Mesh axes (DESIGN §4): ``data`` splits the batch; ``model`` splits the *label* axis of large RLP heads.
With one label per example (ImageNet, n = m = 1,281,167) a head is ~1B parameters and its logits a
B × 1.28M matrix per step; sharding the label axis over ``model`` devices divides both. The head's loss
is then computed from per-shard statistics (head_loss.py), so the full logits never exist on one device.
"""

from __future__ import annotations

import math

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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
    raise ValueError("config.mesh: at most one of data, model may be -1.")
  if data == -1:
    data = n // model if model > 0 and n % model == 0 else 0
  if model == -1:
    model = n // data if data > 0 and n % data == 0 else 0
  if data < 1 or model < 1 or data * model != n:
    raise ValueError(
      f"config.mesh: data={mesh_config.data}, model={mesh_config.model} does not fit the {n} "
      f"devices; use data * model = {n} (or -1 on one axis)."
    )
  hosts = len({d.process_index for d in devices.flat})
  if data % hosts:
    # Each host reads its own examples; a data-axis entry spanning hosts would need the same rows on both.
    raise ValueError(
      f"config.mesh: data={data} is not a multiple of the {hosts} hosts: each host reads its own slice of "
      f"the batch, so the model axis must stay within a host (model <= {n // hosts} devices per host)."
    )
  return Mesh(devices.reshape(data, model), (DATA, MODEL))


def label_sharded(mesh: Mesh | None) -> bool:
  return mesh is not None and mesh.shape[MODEL] > 1


def param_spec(path: tuple[str, ...], shape: tuple[int, ...], mesh: Mesh, *, fsdp: bool) -> P:
  """Partitioning of one parameter (or optimizer-state leaf of the same shape).

  RLP head output layers (``rlp/.../kernel`` (H, D, n), ``rlp/.../bias`` (H, n)) put n over ``model`` when
  it divides evenly. With ``fsdp``, any other large array puts its largest evenly divisible axis over
  ``data`` (ZeRO-3 style: XLA all-gathers it for the matmul and reduce-scatters its gradient).
  """
  if path and path[0] == "rlp" and path[-1] in ("kernel", "bias") and shape[-1] % mesh.shape[MODEL] == 0:
    return P(*([None] * (len(shape) - 1)), MODEL)
  if fsdp and math.prod(shape) >= 2**18:
    for axis in np.argsort(shape)[::-1]:
      if shape[axis] % mesh.shape[DATA] == 0:
        spec = [None] * len(shape)
        spec[axis] = DATA
        return P(*spec)
  return P()


def _names(path) -> tuple[str, ...]:
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def params_shardings(params, mesh: Mesh, *, fsdp: bool):
  return jax.tree_util.tree_map_with_path(
    lambda path, x: NamedSharding(mesh, param_spec(_names(path), x.shape, mesh, fsdp=fsdp)), params
  )


def opt_state_shardings(opt_state, params, params_sharding, mesh: Mesh):
  """Optimizer-state leaves that mirror a parameter (momenta) take its sharding; scalars are replicated.

  Matched by the parameter's path suffix inside the optimizer state, which is how optax nests them.
  """
  by_path = {
    _names(path): (x.shape, sh)
    for (path, x), sh in zip(
      jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(params_sharding)
    )
  }

  def pick(path, x):
    names = _names(path)
    for start in range(len(names)):
      hit = by_path.get(names[start:])
      if hit is not None and hit[0] == x.shape:
        return hit[1]
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(pick, opt_state)


def shard_map(f, *, mesh: Mesh, in_specs, out_specs):
  """``jax.shard_map`` without the replication check (its keyword differs across JAX versions).

  Used only for functions that are never differentiated through (head_loss has its own VJP, itself a
  shard_map), so the check's autodiff semantics do not matter.
  """
  return _shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, **{_CHECK_KW: False})


def state_shardings(abstract_state, mesh: Mesh, *, fsdp: bool):
  """NamedShardings for a (abstract) TrainState: parameters and their optimizer moments per param_spec,
  everything else (step, BatchNorm statistics, scalars) replicated."""
  replicated = NamedSharding(mesh, P())
  params = params_shardings(abstract_state.params, mesh, fsdp=fsdp)
  return abstract_state.replace(
    step=replicated,
    params=params,
    batch_stats=jax.tree.map(lambda _: replicated, abstract_state.batch_stats),
    opt_state=opt_state_shardings(abstract_state.opt_state, abstract_state.params, params, mesh),
    loss_sums=jax.tree.map(lambda _: replicated, abstract_state.loss_sums),
  )
