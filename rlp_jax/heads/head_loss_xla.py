"""head_loss's XLA backend: the label axis in blocks, merged with an online log-sum-exp (docs/design.md §3).

The blocks are ``chunk`` labels at a time, on one device or label-sharded over the mesh's ``model`` axis.

``forward`` returns the statistics and what the backward pass needs; ``backward_local`` (one label
shard) and ``sharded`` (a shard_map over the mesh) return, per per-row scale c of head_loss's custom VJP,
dx, dW = (c ⊙ x)ᵀ V and db = cᵀ V for V = q - e_y. Everything is float32 past the matmuls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rlp_jax.heads.label_axis import (
  HeadStats,
  Spec,
  dense,
  dx_from_vw,
  finite_shift,
  logit_grad,
  mask_padding,
  rescale,
  stats_from_margin,
)
from rlp_jax.infra.mesh import DATA, MODEL, shard_map


def _offset(spec: Spec, n_local: int):
  """The first global label of this device's shard."""
  return 0 if spec.axis is None else jax.lax.axis_index(spec.axis) * n_local


def _block(a, start, spec: Spec):
  """Columns [start, start + chunk) of a kernel or bias."""
  return jax.lax.dynamic_slice_in_dim(a, start, spec.chunk, axis=-1)


def _logits(x, kernel, bias, start, spec: Spec):
  """Columns [start, start + chunk) of this device's logits, float32."""
  return dense(x, _block(kernel, start, spec), _block(bias, start, spec), spec.dt)


def _masked(s, labels, first, spec: Spec):
  """(s with padding labels at -inf, is_target) for a block whose first column is global label ``first``."""
  cols = first + jnp.arange(s.shape[-1])
  return mask_padding(s, spec.num_valid, first), cols[None, None, :] == labels[..., None]


def _block_stats(s, is_target, first):
  """What the losses need of one block: the others' (max, sum of exp), the target logit, max and argmax.

  The target logit is 0 when the target is elsewhere; the block's max and argmax are for the accuracy.
  """
  others = jnp.where(is_target, -jnp.inf, s)
  m_o = others.max(-1)
  return dict(
    m_o=m_o,
    se_o=jnp.exp(others - finite_shift(m_o)[..., None]).sum(-1),
    t=jnp.where(is_target, s, 0.0).sum(-1),
    best=s.max(-1),
    arg=(jnp.argmax(s, -1) + first).astype(jnp.int32),
  )


def _merge(a, b):
  """Statistics of two label blocks, b's labels after a's (online logsumexp; argmax ties keep a's)."""
  m_o = jnp.maximum(a["m_o"], b["m_o"])
  return dict(
    m_o=m_o,
    se_o=rescale(a["m_o"], a["se_o"], m_o) + rescale(b["m_o"], b["se_o"], m_o),
    t=a["t"] + b["t"],
    best=jnp.maximum(a["best"], b["best"]),
    arg=jnp.where(b["best"] > a["best"], b["arg"], a["arg"]),
  )


def _merge_devices(st, axis):
  """Statistics over all devices' shards: pmax of maxima, psum of rescaled sums, the lowest argmax."""
  m_o, best = jax.lax.pmax(st["m_o"], axis), jax.lax.pmax(st["best"], axis)
  big = jnp.iinfo(jnp.int32).max
  return dict(
    m_o=m_o,
    se_o=jax.lax.psum(rescale(st["m_o"], st["se_o"], m_o), axis),
    t=jax.lax.psum(st["t"], axis),
    best=best,
    arg=jax.lax.pmin(jnp.where(st["best"] == best, st["arg"], big), axis),
  )


def forward(x, kernel, bias, labels, *, spec: Spec):
  """(HeadStats, extras): extras = (lse_{≠y},) plus this device's logits if they are kept.

  Only the *other* labels' log-sum-exp is accumulated: with the target's margin d = s_y - lse_{≠y},
  lse = logaddexp(lse_{≠y}, s_y), so ce = softplus(-d), log(1 - p_y) = -softplus(d) and p_y = sigmoid(d)
  — exact and stable at any margin, from one exp pass over the logits instead of two.
  """
  n_local = kernel.shape[-1]
  base = _offset(spec, n_local)

  def block(i):
    start = i * spec.chunk
    s, is_target = _masked(_logits(x, kernel, bias, start, spec), labels, base + start, spec)
    return s, _block_stats(s, is_target, base + start)

  s, st = block(0)
  if n_local > spec.chunk:
    st = jax.lax.fori_loop(1, n_local // spec.chunk, lambda i, acc: _merge(acc, block(i)[1]), st)
  if spec.axis is not None:
    st = _merge_devices(st, spec.axis)
  lse_o = finite_shift(st["m_o"]) + jnp.log(st["se_o"])
  stats = stats_from_margin(st["t"], lse_o, st["arg"], labels)
  return stats, ((lse_o, s) if spec.store_logits else (lse_o,))


def backward_local(x, kernel, bias, labels, extras, scales, *, spec: Spec):
  """(dxs, dkernels, dbiases) on one device: one of each per scale."""
  vw, dks, dbs = _backward(x, kernel, bias, labels, extras, scales, spec=spec)
  return dx_from_vw(vw, scales, spec), dks, dbs


def _backward(x, kernel, bias, labels, extras, scales, *, spec: Spec):
  """(V Wᵀ, dkernels, dbiases) on this device, for logit gradients ``c ⊙ V``, one per scale c in ``scales``.

  dW = (c ⊙ x)ᵀ V, db = cᵀ V. V Wᵀ (B, H, D) is shared by all scales (label_axis.dx_from_vw); with a
  sharded label axis it is the sum over this device's labels only.
  """
  lse_o = extras[0]
  n_local = kernel.shape[-1]
  base = _offset(spec, n_local)
  xs = x if spec.per_head else x[:, None, :]
  xcs = tuple((c[..., None] * xs).astype(spec.dt) for c in scales)  # (B, H, D) each

  def block(s, start):
    s, is_target = _masked(s, labels, base + start, spec)
    v = logit_grad(s, is_target, lse_o)
    vd = v.astype(spec.dt)
    w = _block(kernel, start, spec).astype(spec.dt)
    vw = jnp.einsum("bhn,hdn->bhd", vd, w, preferred_element_type=jnp.float32)
    dks = tuple(jnp.einsum("bhd,bhn->hdn", xc, vd, preferred_element_type=jnp.float32) for xc in xcs)
    dbs = tuple(jnp.einsum("bh,bhn->hn", c, v) for c in scales)
    return vw, dks, dbs

  if spec.store_logits:
    return block(extras[1], 0)

  def body(i, carry):
    vw, dks, dbs = carry
    start = i * spec.chunk
    vw_i, dks_i, dbs_i = block(_logits(x, kernel, bias, start, spec), start)
    # Each block owns its columns of dW and db; a gradient not needed (behind a stop_gradient) is a
    # loop-carried value nothing reads, which XLA removes from the loop.
    put = functools.partial(jax.lax.dynamic_update_slice_in_dim, start_index=start, axis=-1)
    return (
      vw + vw_i,
      tuple(put(a, u) for a, u in zip(dks, dks_i)),
      tuple(put(a, u) for a, u in zip(dbs, dbs_i)),
    )

  k = len(scales)
  init = (
    jnp.zeros(xcs[0].shape, jnp.float32),
    (jnp.zeros(kernel.shape, jnp.float32),) * k,
    (jnp.zeros(bias.shape, jnp.float32),) * k,
  )
  return jax.lax.fori_loop(0, n_local // spec.chunk, body, init)


def sharded(spec: Spec, mesh):
  """forward and _backward as shard_maps over the mesh: labels over ``model``, the batch over ``data``."""
  x_spec = P(DATA, None, None) if spec.per_head else P(DATA, None)
  rows, k_spec, b_spec = P(DATA, None), P(None, None, MODEL), P(None, MODEL)
  extras_spec = (rows, P(DATA, None, MODEL)) if spec.store_logits else (rows,)
  fwd = shard_map(
    functools.partial(forward, spec=spec),
    mesh=mesh,
    in_specs=(x_spec, k_spec, b_spec, rows),
    out_specs=(HeadStats(rows, rows, rows), extras_spec),
  )

  def bwd(x, kernel, bias, labels, extras, scales):
    def local(x, kernel, bias, labels, extras, scales):  # this device's blocks
      vw, dks, dbs = _backward(x, kernel, bias, labels, extras, scales, spec=spec)
      # dx: summed over the label shards — V Wᵀ once with per-head x, else each (B, D) dx (H times
      # smaller; one that is not needed is dropped). dW, db: summed over the batch shards.
      if spec.per_head:
        dxs = dx_from_vw(jax.lax.psum(vw, MODEL), scales, spec)
      else:
        dxs = tuple(jax.lax.psum(dx, MODEL) for dx in dx_from_vw(vw, scales, spec))
      psum_data = functools.partial(jax.lax.psum, axis_name=DATA)
      return dxs, tuple(map(psum_data, dks)), tuple(map(psum_data, dbs))

    k = len(scales)
    return shard_map(
      local,
      mesh=mesh,
      in_specs=(x_spec, k_spec, b_spec, rows, extras_spec, (rows,) * k),
      out_specs=((x_spec,) * k, (k_spec,) * k, (b_spec,) * k),
    )(x, kernel, bias, labels, extras, scales)

  return fwd, bwd
