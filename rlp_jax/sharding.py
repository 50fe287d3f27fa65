"""Device mesh, shardings of the train state, and the label-sharded RLP head loss.

Mesh axes (DESIGN §4): ``data`` splits the batch; ``model`` splits the *label* axis of large RLP heads.
With one label per example (ImageNet, n = m = 1,281,167) a head is ~1B parameters and its logits a
B × 1.28M matrix per step; sharding the label axis over ``model`` devices divides both, and the loss is
computed from per-shard statistics so the full logits never exist on one device:

  lse      = M + log Σ_shards Σ_j exp(s_j - M),     M = pmax of the shard maxima
  s_y      = psum of the target logit (only the shard owning label y contributes)
  lse_{≠y} = same as lse over the entries j ≠ y (own max, so it stays exact when p_y → 1)
  argmax   = pmin over shards of the first index achieving the global max

From these, CE = lse - s_y, log(1 - p_y) = lse_{≠y} - lse, and the accuracy, exactly as rlp.py computes
them from full logits. Maxima enter only through stop_gradient (they are shifts), so gradients are exact.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
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


# ----------------------------------------------------------------------------------------------------
# The label-sharded head statistics
# ----------------------------------------------------------------------------------------------------


def sharded_head_stats(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array,
  labels: jax.Array,
  mesh: Mesh,
  dtype: str = "float32",
  num_valid: int | None = None,
):
  """(ce, log1m, correct), each (B, H), for logits ``x @ kernel + bias`` whose label axis is sharded.

  x: (B, D) shared by all heads or (B, H, D) per head; kernel (H, D, n) and bias (H, n) sharded over
  ``model`` on n; labels (B, H). The batch is split over ``data``.
  """
  x_spec = P(DATA, *([None] * (x.ndim - 1)))
  n = kernel.shape[-1] if num_valid is None else num_valid
  fn = functools.partial(_local_stats, per_head=x.ndim == 3, dtype=dtype, num_valid=n)
  mapped = _shard_map(
    fn,
    mesh=mesh,
    in_specs=(x_spec, P(None, None, MODEL), P(None, MODEL), P(DATA, None)),
    out_specs=(P(DATA, None), P(DATA, None), P(DATA, None)),
    **{_CHECK_KW: False},
  )
  return mapped(x, kernel, bias, labels)


def _local_stats(x, kernel, bias, labels, *, per_head: bool, dtype: str, num_valid: int):
  from rlp_jax.rlp import mask_padding, matmul_dtype  # rlp imports this module

  eq = "bhd,hdn->bhn" if per_head else "bd,hdn->bhn"
  dtype = matmul_dtype(dtype)
  s = jnp.einsum(eq, x.astype(dtype), kernel.astype(dtype), preferred_element_type=jnp.float32) + bias
  n_local = s.shape[-1]
  offset = jax.lax.axis_index(MODEL) * n_local
  s = mask_padding(s, num_valid, offset)  # padded labels (a prime n split over devices) never count
  local_label = labels - offset
  cols = jnp.arange(n_local)
  is_target = cols[None, None, :] == local_label[..., None]  # all False on shards not owning y

  sg = jax.lax.stop_gradient
  m = jax.lax.pmax(sg(s.max(-1)), MODEL)
  lse = m + jnp.log(jax.lax.psum(jnp.exp(s - m[..., None]).sum(-1), MODEL))
  target = jax.lax.psum(jnp.where(is_target, s, 0.0).sum(-1), MODEL)
  others = jnp.where(is_target, -jnp.inf, s)
  m_o = jax.lax.pmax(sg(others.max(-1)), MODEL)
  lse_others = m_o + jnp.log(jax.lax.psum(jnp.exp(others - m_o[..., None]).sum(-1), MODEL))

  local_best = sg(s.max(-1))
  local_arg = jnp.argmax(sg(s), -1) + offset
  best = jax.lax.pmax(local_best, MODEL)
  big = jnp.iinfo(jnp.int32).max
  arg = jax.lax.pmin(jnp.where(local_best == best, local_arg, big).astype(jnp.int32), MODEL)
  return lse - target, lse_others - lse, arg == labels


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


# ----------------------------------------------------------------------------------------------------
# Label-chunked head statistics (one device): the logits are never materialized whole
# ----------------------------------------------------------------------------------------------------


def _partial_stats(s, labels, offset, num_valid):
  """Statistics of one block of logits s (B, H, c) whose first column is label ``offset``."""
  from rlp_jax.rlp import mask_padding  # rlp imports this module

  sg = jax.lax.stop_gradient
  s = mask_padding(s, num_valid, offset)
  is_target = (offset + jnp.arange(s.shape[-1]))[None, None, :] == labels[..., None]
  others = jnp.where(is_target, -jnp.inf, s)
  m, m_o = sg(s.max(-1)), sg(others.max(-1))
  return dict(
    m=m,
    se=jnp.exp(s - m[..., None]).sum(-1),
    t=jnp.where(is_target, s, 0.0).sum(-1),
    m_o=m_o,
    se_o=jnp.exp(others - jnp.where(jnp.isfinite(m_o), m_o, 0.0)[..., None]).sum(-1),
    best=sg(s.max(-1)),
    arg=(jnp.argmax(sg(s), -1) + offset).astype(jnp.int32),
  )


def _combine(a, b):
  """Merges the statistics of two label blocks (online logsumexp; ties in argmax keep block a)."""

  def merge(m1, se1, m2, se2):
    m = jnp.maximum(m1, m2)
    w1 = jnp.where(jnp.isfinite(m1), jnp.exp(m1 - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    w2 = jnp.where(jnp.isfinite(m2), jnp.exp(m2 - jnp.where(jnp.isfinite(m), m, 0.0)), 0.0)
    return m, se1 * w1 + se2 * w2

  m, se = merge(a["m"], a["se"], b["m"], b["se"])
  m_o, se_o = merge(a["m_o"], a["se_o"], b["m_o"], b["se_o"])
  take_b = b["best"] > a["best"]
  return dict(
    m=m,
    se=se,
    t=a["t"] + b["t"],
    m_o=m_o,
    se_o=se_o,
    best=jnp.where(take_b, b["best"], a["best"]),
    arg=jnp.where(take_b, b["arg"], a["arg"]),
  )


def chunked_head_stats(x, kernel, bias, labels, *, chunk: int, num_valid: int, dtype: str = "float32"):
  """(ce, log1m, correct), each (B, H), computed ``chunk`` labels at a time.

  A ``lax.scan`` over label blocks keeps running (max, sum-exp) pairs, the target logit and the argmax;
  its body is rematerialized (``jax.checkpoint``), so the backward pass recomputes each block's logits
  instead of storing them: peak memory holds one (B, H, chunk) block, not the (B, H, n) matrix.
  """
  from rlp_jax.rlp import matmul_dtype  # rlp imports this module

  n = kernel.shape[-1]
  if n % chunk:
    raise ValueError(f"config.rlp.label_chunk={chunk} must divide the (padded) number of labels {n}.")
  eq = "bhd,hdn->bhn" if x.ndim == 3 else "bd,hdn->bhn"
  dt = matmul_dtype(dtype)
  w_blocks = kernel.reshape(kernel.shape[:-1] + (n // chunk, chunk)).transpose(2, 0, 1, 3)
  b_blocks = bias.reshape(bias.shape[0], n // chunk, chunk).transpose(1, 0, 2)

  @jax.checkpoint
  def block_stats(w, b, offset):
    s = jnp.einsum(eq, x.astype(dt), w.astype(dt), preferred_element_type=jnp.float32) + b
    return _partial_stats(s, labels, offset, num_valid)

  def body(carry, block):
    w, b, offset = block
    return _combine(carry, block_stats(w, b, offset)), None

  first = block_stats(w_blocks[0], b_blocks[0], 0)
  offsets = jnp.arange(1, n // chunk, dtype=jnp.int32) * chunk
  acc, _ = jax.lax.scan(body, first, (w_blocks[1:], b_blocks[1:], offsets))
  lse = acc["m"] + jnp.log(acc["se"])
  lse_o = jnp.where(jnp.isfinite(acc["m_o"]), acc["m_o"], 0.0) + jnp.log(acc["se_o"])
  return lse - acc["t"], lse_o - lse, acc["arg"] == labels
