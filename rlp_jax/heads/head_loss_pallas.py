"""head_loss's fused Pallas backend: head_loss_xla's statistics and gradient, logits never in HBM.

head_loss.head_stats with ``loss_kernel='pallas'`` (``config.rlp.loss_kernel``) swaps head_loss_xla's
per-device forward and backward for the three kernels below; the custom VJP, the per-row scales c and
the routing of the two gradient sets stay head_loss's (docs/design.md §3, §5). What the kernels fuse is
the chunk body of head_loss_xla: one (block_b, block_n) logits tile is computed (a loop over BLOCK_K-wide
slices of D), reduced and dropped inside the kernel,

  forward   grid (heads, batch blocks), a loop over label blocks: s = x W + b → running max and sum of
            exp of the *other* labels, the target logit, the max and the lowest argmax;
  dx side   grid (heads, batch blocks, D blocks), a loop over label blocks: V = q - e_y from s and
            lse_{≠y} → V Wᵀ for this BLOCK_D-wide block of D, accumulated per row block;
  dW side   grid (heads, label blocks, D blocks), a loop over batch blocks: (c ⊙ x)ᵀ V and cᵀ V per scale c,

so each backward kernel recomputes the logits (as flash attention's backward does: one kernel owns the
rows, the other the columns, and neither needs atomics) — once per D block, the price of accumulators
that fit a GPU's registers (D = 768: 3 blocks of 256). Every tile side is a power of two (Triton's
block shapes must be; its dots need >= 16 a side): B, n and D are zero-padded to whole tiles. Padded
rows have c = 0 and lse_{≠y} = +inf (V = 0 there whatever the bias: no 0·inf), padded labels are masked
like any padding (``num_valid``), padded features are zeros (no change to any logit).

The kernels lower through Triton, chosen explicitly (``compiler_params``): jax 0.10.2's default Pallas GPU
backend is Mosaic GPU, which would stage whole blocks in shared memory. ``interpret`` defaults to True on
CPU (Pallas's interpreter: exact, slow — tests and correctness rows only); tests/test_head_loss_pallas.py
also lowers the kernels for CUDA on CPU (Triton's MLIR, compute capability 9.0), which checks the block
shapes, not the shared memory or register budget: that, the time and the tile sizes below are for a GPU
session to measure (docs/design.md §5). Only one label shard: with a ``model`` mesh axis > 1, use the XLA
path (configuration.validate refuses the pair).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from rlp_jax.heads.label_axis import dx_from_vw, finite_shift, logit_grad, rescale, stats_from_margin

# Tile sizes, powers of two. Untuned (no GPU has run these kernels yet); bf16 operand tiles of a few
# tens of KB and fp32 accumulators of 32 KB per program, well inside an H100's 227 KB of shared memory.
BLOCK_B = 32  # rows per tile
BLOCK_N = 32  # labels per tile
BLOCK_K = 64  # the slice of D each dot of the logits contracts
BLOCK_D = 256  # the slice of D a backward program owns (its accumulators: (BLOCK_B | BLOCK_N) x BLOCK_D)
MIN_TILE = 16  # Triton's dots need >= 16 a side
# None: Pallas's interpreter when the default backend is a CPU (tests set False to lower for CUDA).
INTERPRET = None
# Set to True once a GPU session has timed the tiles above (head_loss warns once while it is False).
TUNED = False
# Warps per program: the forward's accumulators are (BLOCK_B,) rows; the backward programs own
# (BLOCK_B | BLOCK_N) x BLOCK_D accumulators, twice the registers' work.
FORWARD_WARPS = 4
BACKWARD_WARPS = 8


def _pow2(v):
  return 1 << max(0, int(v) - 1).bit_length()


def _logits(x_ref, rows, w_ref, w_cols, b_ref, y, start, *, bb, bn, bk, kb, num_valid, dt):
  """One tile s = x W + b of rows ``rows`` of x_ref and columns ``w_cols`` of w_ref/b_ref.

  Returns (tile s with padding labels at -inf, is_target, global columns); the columns are the global labels
  [start, start + bn). A loop over D's BLOCK_K slices.
  """

  def k_step(k, s):
    d = pl.ds(pl.multiple_of(k * bk, bk), bk)
    return s + jnp.dot(
      x_ref[rows, d].astype(dt), w_ref[d, w_cols].astype(dt), preferred_element_type=jnp.float32
    )

  s = jax.lax.fori_loop(0, kb, k_step, jnp.zeros((bb, bn), jnp.float32)) + b_ref[:, w_cols]
  cols = start + jax.lax.broadcasted_iota(jnp.int32, (1, bn), 1)
  s = jnp.where(cols < num_valid, s, -jnp.inf)
  return s, cols == y[:, None], cols


def _forward_kernel(x_ref, w_ref, b_ref, y_ref, lse_ref, t_ref, arg_ref, *, blocks, **kw):
  y = y_ref[...]
  rows, bn = y.shape[0], kw["bn"]

  def body(j, carry):
    m_o, se_o, t, best, arg = carry
    start = pl.multiple_of(j * bn, bn)
    s, is_target, cols = _logits(x_ref, slice(None), w_ref, pl.ds(start, bn), b_ref, y, start, **kw)
    others = jnp.where(is_target, -jnp.inf, s)
    m_new = jnp.maximum(m_o, others.max(1))
    se_o = rescale(m_o, se_o, m_new) + jnp.exp(others - finite_shift(m_new)[:, None]).sum(1)
    t = t + jnp.where(is_target, s, 0.0).sum(1)
    b_best = s.max(1)
    # The lowest column at the block's max (argmax's tie rule); earlier blocks win ties, as in head_loss_xla.
    b_arg = jnp.where(s == b_best[:, None], cols, jnp.iinfo(jnp.int32).max).min(1)
    return m_new, se_o, t, jnp.maximum(best, b_best), jnp.where(b_best > best, b_arg, arg)

  neg = jnp.full((rows,), -jnp.inf, jnp.float32)
  zero = jnp.zeros((rows,), jnp.float32)
  m_o, se_o, t, _, arg = jax.lax.fori_loop(
    0, blocks, body, (neg, zero, zero, neg, jnp.zeros((rows,), jnp.int32))
  )
  lse_ref[...] = finite_shift(m_o) + jnp.log(se_o)
  t_ref[...] = t
  arg_ref[...] = arg


def _dx_kernel(x_ref, w_ref, b_ref, y_ref, lse_ref, vw_ref, *, blocks, bd, **kw):
  y, lse_o, bn, dt = y_ref[...], lse_ref[...], kw["bn"], kw["dt"]
  dcols = pl.ds(pl.multiple_of(pl.program_id(2) * bd, bd), bd)

  def body(j, vw):
    start = pl.multiple_of(j * bn, bn)
    s, is_target, _ = _logits(x_ref, slice(None), w_ref, pl.ds(start, bn), b_ref, y, start, **kw)
    v = logit_grad(s, is_target, lse_o).astype(dt)
    w = w_ref[dcols, pl.ds(start, bn)].astype(dt)
    return vw + jax.lax.dot_general(v, w, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)

  vw_ref[...] = jax.lax.fori_loop(0, blocks, body, jnp.zeros(vw_ref.shape, jnp.float32))


def _dw_kernel(x_ref, w_ref, b_ref, y_ref, lse_ref, c_ref, dk_ref, db_ref, *, blocks, bd, scales, **kw):
  bb, bn, dt = kw["bb"], kw["bn"], kw["dt"]
  start = pl.program_id(1) * bn
  dcols = pl.ds(pl.multiple_of(pl.program_id(2) * bd, bd), bd)

  def body(i, carry):
    rows = pl.ds(pl.multiple_of(i * bb, bb), bb)
    s, is_target, _ = _logits(x_ref, rows, w_ref, slice(None), b_ref, y_ref[rows], start, **kw)
    v = logit_grad(s, is_target, lse_ref[rows])
    x = x_ref[rows, dcols]
    dks, dbs = carry
    # Triton cannot slice a loaded tensor: one load per scale.
    cs = [c_ref[k, rows][:, None] for k in range(scales)]
    dks = tuple(
      dk
      + jax.lax.dot_general(
        (c * x).astype(dt), v.astype(dt), (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32
      )
      for c, dk in zip(cs, dks)
    )
    dbs = tuple(db + (c * v).sum(0, keepdims=True) for c, db in zip(cs, dbs))
    return dks, dbs

  init = ((jnp.zeros((bd, bn), jnp.float32),) * scales, (jnp.zeros((1, bn), jnp.float32),) * scales)
  dks, dbs = jax.lax.fori_loop(0, blocks, body, init)
  for k in range(scales):
    dk_ref[k] = dks[k]
    db_ref[k] = dbs[k]


def _pad(a, axis, size, value=0):
  """``a`` padded with ``value`` to ``size`` along ``axis``."""
  if a.shape[axis] == size:
    return a
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, size - a.shape[axis])
  return jnp.pad(a, widths, constant_values=value)


class _Layout:
  """Head-major, padded operands and their tile sizes.

  x (Hx, Bp, Dp) with Hx = H or 1 (shared), W (H, Dp, Np), b (H, 1, Np), labels (H, Bp); bb, bn, bk, bd the
  tile sizes (powers of two).
  """

  def __init__(self, x, kernel, bias, labels, spec, block_b, block_n):
    b, (h, d, n) = x.shape[0], kernel.shape
    self.b, self.n, self.h, self.d, self.per_head = b, n, h, d, spec.per_head
    self.bb = min(block_b or BLOCK_B, max(MIN_TILE, _pow2(b)))
    self.bn = min(block_n or BLOCK_N, max(MIN_TILE, _pow2(n)))
    self.bd = min(BLOCK_D, max(MIN_TILE, _pow2(d)))
    self.bk = min(BLOCK_K, self.bd)
    self.bp, self.np, self.dp = (pl.cdiv(v, t) * t for v, t in ((b, self.bb), (n, self.bn), (d, self.bd)))
    xs = jnp.moveaxis(x, 1, 0) if spec.per_head else x[None]
    self.x = _pad(_pad(xs, 1, self.bp), 2, self.dp)
    self.w = _pad(_pad(kernel, 2, self.np), 1, self.dp)
    self.bias = _pad(bias, 1, self.np)[:, None, :]
    self.y = _pad(labels.T.astype(jnp.int32), 1, self.bp)
    tiles = dict(bb=self.bb, bn=self.bn, bk=self.bk, kb=self.dp // self.bk)
    self.kw = dict(tiles, num_valid=spec.num_valid, dt=spec.dt)

  def x_spec(self, rows):
    """x's block for grid point (h, i, ...): this head's (or the shared) rows ``rows(i)``, all of D."""
    hx = (lambda h: h) if self.per_head else (lambda h: 0)
    return pl.BlockSpec((None, rows, self.dp), lambda h, i, *_: (hx(h), 0 if rows == self.bp else i, 0))


def _call(kernel, *operands, out_shape, grid, in_specs, out_specs, interpret, num_warps):
  if interpret is None:
    interpret = jax.default_backend() == "cpu" if INTERPRET is None else INTERPRET
  return pl.pallas_call(
    kernel,
    out_shape=out_shape,
    grid=grid,
    in_specs=in_specs,
    out_specs=out_specs,
    interpret=interpret,
    compiler_params=pl_triton.CompilerParams(num_warps=num_warps, num_stages=2),
  )(*operands)


def forward(x, kernel, bias, labels, *, spec, block_b=None, block_n=None, interpret=None):
  """head_loss_xla.forward's (HeadStats, (lse_{≠y},)) from the fused forward kernel."""
  lay = _Layout(x, kernel, bias, labels, spec, block_b, block_n)
  row = pl.BlockSpec((None, lay.bb), lambda h, i: (h, i))
  f32 = jax.ShapeDtypeStruct((lay.h, lay.bp), jnp.float32)
  lse_o, t, arg = _call(
    functools.partial(_forward_kernel, blocks=lay.np // lay.bn, **lay.kw),
    lay.x,
    lay.w,
    lay.bias,
    lay.y,
    out_shape=(f32, f32, jax.ShapeDtypeStruct((lay.h, lay.bp), jnp.int32)),
    grid=(lay.h, lay.bp // lay.bb),
    in_specs=[
      lay.x_spec(lay.bb),
      pl.BlockSpec((None, lay.dp, lay.np), lambda h, i: (h, 0, 0)),
      pl.BlockSpec((None, 1, lay.np), lambda h, i: (h, 0, 0)),
      row,
    ],
    out_specs=(row, row, row),
    interpret=interpret,
    num_warps=FORWARD_WARPS,
  )
  lse_o, t, arg = (a[:, : lay.b].T for a in (lse_o, t, arg))
  return stats_from_margin(t, lse_o, arg, labels), (lse_o,)


def backward_local(
  x, kernel, bias, labels, extras, scales, *, spec, block_b=None, block_n=None, interpret=None
):
  """head_loss_xla.backward_local's (dxs, dkernels, dbiases), one of each per scale, from the two kernels."""
  lay = _Layout(x, kernel, bias, labels, spec, block_b, block_n)
  # Padded rows: lse_{≠y} = +inf makes their V exactly 0 (0 would give exp(bias), inf for a large bias,
  # and then c · V = 0 · inf = NaN in dW and db).
  lse_o = _pad(extras[0].T, 1, lay.bp, jnp.inf)
  k, nd = len(scales), lay.dp // lay.bd
  row = pl.BlockSpec((None, lay.bb), lambda h, i, dj: (h, i))
  vw = _call(
    functools.partial(_dx_kernel, blocks=lay.np // lay.bn, bd=lay.bd, **lay.kw),
    lay.x,
    lay.w,
    lay.bias,
    lay.y,
    lse_o,
    out_shape=jax.ShapeDtypeStruct((lay.h, lay.bp, lay.dp), jnp.float32),
    grid=(lay.h, lay.bp // lay.bb, nd),
    in_specs=[
      lay.x_spec(lay.bb),
      pl.BlockSpec((None, lay.dp, lay.np), lambda h, i, dj: (h, 0, 0)),
      pl.BlockSpec((None, 1, lay.np), lambda h, i, dj: (h, 0, 0)),
      row,
      row,
    ],
    out_specs=pl.BlockSpec((None, lay.bb, lay.bd), lambda h, i, dj: (h, i, dj)),
    interpret=interpret,
    num_warps=BACKWARD_WARPS,
  )
  cs = _pad(jnp.stack([c.T for c in scales], 1), 2, lay.bp)  # (H, scales, Bp); padded rows have c = 0
  all_rows = pl.BlockSpec((None, lay.bp), lambda h, j, dj: (h, 0))
  # db gets a D-block axis so that no two programs write one place; block 0's copy is kept.
  dk, db = _call(
    functools.partial(_dw_kernel, blocks=lay.bp // lay.bb, bd=lay.bd, scales=k, **lay.kw),
    lay.x,
    lay.w,
    lay.bias,
    lay.y,
    lse_o,
    cs,
    out_shape=(
      jax.ShapeDtypeStruct((k, lay.h, lay.dp, lay.np), jnp.float32),
      jax.ShapeDtypeStruct((k, lay.h, nd, 1, lay.np), jnp.float32),
    ),
    grid=(lay.h, lay.np // lay.bn, nd),
    in_specs=[
      lay.x_spec(lay.bp),
      pl.BlockSpec((None, lay.dp, lay.bn), lambda h, j, dj: (h, 0, j)),
      pl.BlockSpec((None, 1, lay.bn), lambda h, j, dj: (h, 0, j)),
      all_rows,
      all_rows,
      pl.BlockSpec((None, k, lay.bp), lambda h, j, dj: (h, 0, 0)),
    ],
    out_specs=(
      pl.BlockSpec((k, None, lay.bd, lay.bn), lambda h, j, dj: (0, h, dj, j)),
      pl.BlockSpec((k, None, None, 1, lay.bn), lambda h, j, dj: (0, h, dj, 0, j)),
    ),
    interpret=interpret,
    num_warps=BACKWARD_WARPS,
  )
  vw = jnp.moveaxis(vw[:, : lay.b, : lay.d], 0, 1)  # (B, H, D)
  dks = tuple(dk[j, :, : lay.d, : lay.n] for j in range(k))
  dbs = tuple(db[j, :, 0, 0, : lay.n] for j in range(k))
  return dx_from_vw(vw, scales, spec), dks, dbs
