"""Shardings of the train state over the mesh (infra/mesh.py): which parameter goes where.

RLP head output layers put their label axis over ``model``; with ``config.mesh.fsdp`` other large arrays
are split over ``data``; optimizer moments follow their parameter; everything else is replicated.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from rlp_jax.infra.mesh import DATA, MODEL


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


def state_shardings(abstract_state, mesh: Mesh, *, fsdp: bool):
  """NamedShardings for a (abstract) TrainState.

  Parameters and their optimizer moments per param_spec, everything else (step, BatchNorm statistics,
  scalars) replicated.
  """
  replicated = NamedSharding(mesh, P())
  params = params_shardings(abstract_state.params, mesh, fsdp=fsdp)
  return abstract_state.replace(
    step=replicated,
    params=params,
    batch_stats=jax.tree.map(lambda _: replicated, abstract_state.batch_stats),
    opt_state=opt_state_shardings(abstract_state.opt_state, abstract_state.params, params, mesh),
    loss_sums=jax.tree.map(lambda _: replicated, abstract_state.loss_sums),
  )
