"""A fused Pallas kernel for head_loss's label blocks: the same statistics and gradient, logits never in HBM.

head_loss.head_stats with ``impl='pallas'`` (``config.rlp.loss_kernel='pallas'``) swaps its per-device
forward and backward for the three kernels below; the custom VJP, the per-row scales c and the routing of
the two gradient sets stay head_loss's (docs/design.md §3, §5). What the kernels fuse is the chunk body
of the XLA path: one (block_b, block_n) logits tile is computed, reduced and dropped inside the kernel,

  forward   grid (heads, batch blocks), a loop over label blocks: s = x W + b → running max and sum of
            exp of the *other* labels, the target logit, the max and the lowest argmax;
  dx side   grid (heads, batch blocks), a loop over label blocks: V = q - e_y from s and lse_{≠y} →
            V Wᵀ accumulated per row block;
  dW side   grid (heads, label blocks), a loop over batch blocks: (c ⊙ x)ᵀ V and cᵀ V per scale c,

so each backward kernel recomputes the logits once (as flash attention's backward does: one kernel owns
the rows, the other the columns, and neither needs atomics). Blocks that do not divide B or n are padded:
padded rows have c = 0, padded labels are masked like head_loss's padding (``num_valid``).

``interpret`` defaults to True on CPU (Pallas's interpreter: exact, slow — tests and correctness rows
only); on a GPU the kernels lower through Triton. Only one label shard: with a ``model`` mesh axis > 1,
use the XLA path. Not yet done, for a GPU session to measure and tune (docs/design.md §5): the tiles span
all of D (768 for ViT-B: a K loop over D blocks would bound the tiles' registers), and the forward and dx
kernels run one program per (head, row block), 16 for B = 1024 (a grid axis splitting the labels, merged
as head_loss._merge does, would fill the GPU's SMs).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from rlp_jax.heads.head_loss import _dxs  # the one place dx = c ⊙ V Wᵀ is formed

# Tile sizes: powers of two (Triton's dots need >= 16 per side). Untuned: no GPU has run these kernels yet.
BLOCK_B = 64
BLOCK_N = 128


def _safe(m):
  """A finite shift for exp(): an all-masked row's max (-inf) shifts by 0 instead."""
  return jnp.where(jnp.isfinite(m), m, 0.0)


def _tile(x, w_ref, b_ref, y, start, *, bn, num_valid, dt):
  """(logits tile with padding labels at -inf, is_target, global columns) for labels [start, start+bn)."""
  w = w_ref[:, pl.ds(start, bn)].astype(dt)
  s = jnp.dot(x.astype(dt), w, preferred_element_type=jnp.float32) + b_ref[:, pl.ds(start, bn)]
  cols = start + jax.lax.broadcasted_iota(jnp.int32, (1, bn), 1)
  s = jnp.where(cols < num_valid, s, -jnp.inf)
  return s, cols == y[:, None], cols


def _forward_kernel(x_ref, w_ref, b_ref, y_ref, lse_ref, t_ref, arg_ref, *, bn, blocks, num_valid, dt):
  x, y = x_ref[...], y_ref[...]
  rows = y.shape[0]

  def body(j, carry):
    m_o, se_o, t, best, arg = carry
    s, is_target, cols = _tile(x, w_ref, b_ref, y, j * bn, bn=bn, num_valid=num_valid, dt=dt)
    others = jnp.where(is_target, -jnp.inf, s)
    m_new = jnp.maximum(m_o, others.max(1))
    se_o = jnp.where(jnp.isfinite(m_o), se_o * jnp.exp(m_o - _safe(m_new)), 0.0) + jnp.exp(
      others - _safe(m_new)[:, None]
    ).sum(1)
    t = t + jnp.where(is_target, s, 0.0).sum(1)
    b_best = s.max(1)
    # The lowest column at the block's max (argmax's tie rule); earlier blocks win ties (head_loss._merge).
    b_arg = jnp.where(s == b_best[:, None], cols, jnp.iinfo(jnp.int32).max).min(1)
    return m_new, se_o, t, jnp.maximum(best, b_best), jnp.where(b_best > best, b_arg, arg)

  neg = jnp.full((rows,), -jnp.inf, jnp.float32)
  zero = jnp.zeros((rows,), jnp.float32)
  m_o, se_o, t, _, arg = jax.lax.fori_loop(
    0, blocks, body, (neg, zero, zero, neg, jnp.zeros((rows,), jnp.int32))
  )
  lse_ref[...] = _safe(m_o) + jnp.log(se_o)
  t_ref[...] = t
  arg_ref[...] = arg


def _v(s, is_target, lse_o):
  """V = q - e_y of a tile (head_loss._backward): exp(s - lse_{≠y}) off the target, -1 on it."""
  return jnp.where(is_target, -1.0, jnp.exp(s - lse_o[:, None]))


def _dx_kernel(x_ref, w_ref, b_ref, y_ref, lse_ref, vw_ref, *, bn, blocks, num_valid, dt):
  x, y, lse_o = x_ref[...], y_ref[...], lse_ref[...]

  def body(j, vw):
    start = j * bn
    s, is_target, _ = _tile(x, w_ref, b_ref, y, start, bn=bn, num_valid=num_valid, dt=dt)
    w = w_ref[:, pl.ds(start, bn)].astype(dt)
    v = _v(s, is_target, lse_o).astype(dt)
    return vw + jax.lax.dot_general(v, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)

  vw_ref[...] = jax.lax.fori_loop(0, blocks, body, jnp.zeros(vw_ref.shape, jnp.float32))


def _dw_kernel(x_ref, w_ref, b_ref, y_ref, lse_ref, c_ref, dk_ref, db_ref, *, bb, blocks, num_valid, dt):
  bn = w_ref.shape[1]
  start = pl.program_id(1) * bn

  def body(i, carry):
    rows = pl.ds(i * bb, bb)
    x, y, lse_o, c = x_ref[rows, :], y_ref[rows], lse_ref[rows], c_ref[:, rows]  # c: (scales, bb)
    s = jnp.dot(x.astype(dt), w_ref[...].astype(dt), preferred_element_type=jnp.float32) + b_ref[...]
    cols = start + jax.lax.broadcasted_iota(jnp.int32, (1, bn), 1)
    s = jnp.where(cols < num_valid, s, -jnp.inf)
    v = _v(s, cols == y[:, None], lse_o)
    dks, dbs = carry
    dks = tuple(
      dk
      + jax.lax.dot_general(
        (c[k][:, None] * x).astype(dt),
        v.astype(dt),
        (((0,), (0,)), ((), ())),
        preferred_element_type=jnp.float32,
      )
      for k, dk in enumerate(dks)
    )
    dbs = tuple(db + (c[k][:, None] * v).sum(0, keepdims=True) for k, db in enumerate(dbs))
    return dks, dbs

  k = c_ref.shape[0]
  init = ((jnp.zeros(dk_ref.shape[1:], jnp.float32),) * k, (jnp.zeros(db_ref.shape[1:], jnp.float32),) * k)
  dks, dbs = jax.lax.fori_loop(0, blocks, body, init)
  for j in range(k):
    dk_ref[j] = dks[j]
    db_ref[j] = dbs[j]


def _pad(a, axis, size):
  return (
    a
    if a.shape[axis] == size
    else jnp.pad(a, [(0, size - a.shape[axis]) if i == axis else (0, 0) for i in range(a.ndim)])
  )


class _Layout:
  """Head-major, padded operands: x (Hx, Bp, D) with Hx = H or 1 (shared), W (H, D, Np), b (H, 1, Np),
  labels (H, Bp); bb, bn the tile sizes."""

  def __init__(self, x, kernel, bias, labels, spec, block_b, block_n):
    b, (h, d, n) = x.shape[0], kernel.shape
    self.b, self.n, self.h, self.d, self.per_head = b, n, h, d, spec.per_head
    self.bb = min(block_b or BLOCK_B, b)
    self.bn = min(block_n or BLOCK_N, n)
    self.bp, self.np = pl.cdiv(b, self.bb) * self.bb, pl.cdiv(n, self.bn) * self.bn
    xs = jnp.moveaxis(x, 1, 0) if spec.per_head else x[None]
    self.x = _pad(xs, 1, self.bp)
    self.w = _pad(kernel, 2, self.np)
    self.bias = _pad(bias, 1, self.np)[:, None, :]
    self.y = _pad(labels.T.astype(jnp.int32), 1, self.bp)
    self.kw = dict(num_valid=spec.num_valid, dt=spec.dt)

  def x_spec(self, rows):
    """x's block for grid point (h, i): this head's (or the shared) rows ``rows(i)``, all of D."""
    hx = (lambda h: h) if self.per_head else (lambda h: 0)
    return pl.BlockSpec((None, rows, self.d), lambda h, i: (hx(h), 0 if rows == self.bp else i, 0))


def _call(kernel, out_shape, grid, in_specs, out_specs, interpret, *operands):
  return pl.pallas_call(
    kernel, out_shape=out_shape, grid=grid, in_specs=in_specs, out_specs=out_specs, interpret=interpret
  )(*operands)


def forward(x, kernel, bias, labels, *, spec, block_b=None, block_n=None, interpret=None):
  """head_loss._forward's ((ce, log1m, correct), (lse_{≠y},)) from the fused forward kernel."""
  lay = _Layout(x, kernel, bias, labels, spec, block_b, block_n)
  interpret = jax.default_backend() == "cpu" if interpret is None else interpret
  row = pl.BlockSpec((None, lay.bb), lambda h, i: (h, i))
  f32 = jax.ShapeDtypeStruct((lay.h, lay.bp), jnp.float32)
  lse_o, t, arg = _call(
    functools.partial(_forward_kernel, bn=lay.bn, blocks=lay.np // lay.bn, **lay.kw),
    (f32, f32, jax.ShapeDtypeStruct((lay.h, lay.bp), jnp.int32)),
    (lay.h, lay.bp // lay.bb),
    [
      lay.x_spec(lay.bb),
      pl.BlockSpec((None, lay.d, lay.np), lambda h, i: (h, 0, 0)),
      pl.BlockSpec((None, 1, lay.np), lambda h, i: (h, 0, 0)),
      row,
    ],
    (row, row, row),
    interpret,
    lay.x,
    lay.w,
    lay.bias,
    lay.y,
  )
  lse_o, t, arg = (a[:, : lay.b].T for a in (lse_o, t, arg))
  margin = t - lse_o  # as head_loss._forward: exact and stable at any margin
  return (jax.nn.softplus(-margin), -jax.nn.softplus(margin), arg == labels), (lse_o,)


def backward_local(
  x, kernel, bias, labels, extras, scales, *, spec, block_b=None, block_n=None, interpret=None
):
  """head_loss._backward_local's (dxs, dkernels, dbiases), one of each per scale, from the two kernels."""
  lay = _Layout(x, kernel, bias, labels, spec, block_b, block_n)
  interpret = jax.default_backend() == "cpu" if interpret is None else interpret
  lse_o = _pad(extras[0].T, 1, lay.bp)
  k = len(scales)
  whole_w = pl.BlockSpec((None, lay.d, lay.np), lambda h, i: (h, 0, 0))
  whole_b = pl.BlockSpec((None, 1, lay.np), lambda h, i: (h, 0, 0))
  row = pl.BlockSpec((None, lay.bb), lambda h, i: (h, i))
  vw = _call(
    functools.partial(_dx_kernel, bn=lay.bn, blocks=lay.np // lay.bn, **lay.kw),
    jax.ShapeDtypeStruct((lay.h, lay.bp, lay.d), jnp.float32),
    (lay.h, lay.bp // lay.bb),
    [lay.x_spec(lay.bb), whole_w, whole_b, row, row],
    pl.BlockSpec((None, lay.bb, lay.d), lambda h, i: (h, i, 0)),
    interpret,
    lay.x,
    lay.w,
    lay.bias,
    lay.y,
    lse_o,
  )
  cs = _pad(jnp.stack([c.T for c in scales], 1), 2, lay.bp)  # (H, scales, Bp); padded rows have c = 0
  all_rows = pl.BlockSpec((None, lay.bp), lambda h, j: (h, 0))
  dk, db = _call(
    functools.partial(_dw_kernel, bb=lay.bb, blocks=lay.bp // lay.bb, **lay.kw),
    (
      jax.ShapeDtypeStruct((k, lay.h, lay.d, lay.np), jnp.float32),
      jax.ShapeDtypeStruct((k, lay.h, 1, lay.np), jnp.float32),
    ),
    (lay.h, lay.np // lay.bn),
    [
      lay.x_spec(lay.bp),
      pl.BlockSpec((None, lay.d, lay.bn), lambda h, j: (h, 0, j)),
      pl.BlockSpec((None, 1, lay.bn), lambda h, j: (h, 0, j)),
      all_rows,
      all_rows,
      pl.BlockSpec((None, k, lay.bp), lambda h, j: (h, 0, 0)),
    ],
    (
      pl.BlockSpec((k, None, lay.d, lay.bn), lambda h, j: (0, h, 0, j)),
      pl.BlockSpec((k, None, 1, lay.bn), lambda h, j: (0, h, 0, j)),
    ),
    interpret,
    lay.x,
    lay.w,
    lay.bias,
    lay.y,
    lse_o,
    cs,
  )
  vw = jnp.moveaxis(vw[:, : lay.b], 0, 1)  # (B, H, D)
  dks = tuple(dk[j, :, :, : lay.n] for j in range(k))
  dbs = tuple(db[j, :, 0, : lay.n] for j in range(k))
  return _dxs(vw, scales, spec), dks, dbs
