"""The statistics of an RLP head's softmax over its label axis, and their exact hand-written gradient.

For logits ``s = x @ W + b`` over n labels and a random label y, per example and head:

  ce      = lse(s) - s_y                      (L_rnd's cross-entropy)
  log1m   = lse(s_{j≠y}) - lse(s)             (log(1 - p_y), L_reg = -log1m; stable when p_y → 1)
  correct = argmax(s) == y

The label axis may be *chunked* (``chunk`` labels at a time: the (B, H, n) logits never exist whole) and
*sharded* over the mesh's ``model`` axis (each device owns n / model labels; statistics are merged with
pmax / psum, docs/design.md §3). Both are exact; everything is float32 past the matmuls.

Why a custom VJP: autodiff of the two log-sum-exps writes and reads several (B, H, n) float32 matrices in
the backward pass — for one label per example (n = 1.28M, B = 1024) each is 5 GB of memory traffic — and
the L_rnd and L_reg evaluations got separate backward matmuls. Both gradients are multiples of one
matrix. With p = softmax(s), q = softmax(s_{j≠y}) (q_y = 0) and V = q - e_y:

  d ce / ds    = p - e_y      = (1 - p_y) V
  d log1m / ds = q - p  (j≠y), -p_y (j=y)  =  p_y V

so for cotangents (g_ce, g_log1m) the logit gradient is ``c ⊙ V`` with ``c = g_ce (1 - p_y) + g_log1m p_y``,
a per-row scale. The backward pass builds V once (in the matmul dtype), then

  dW = (c ⊙ x)ᵀ V,   db = cᵀ V,   dx = c ⊙ (V Wᵀ).

Both factors are exact and cancellation-free: 1 - p_y = exp(log1m), p_y = exp(-ce). The gradient routing
of docs/design.md §1 is *not* decided here: ``routing.routed_losses`` passes the head and features through
which ce is differentiated (``sg(x)``, live W, b: L_rnd) and, as ``log1m_inputs``, those through which
log1m is (live x, ``sg(W)``, ``sg(b)``: L_reg). The stop_gradients cut the cotangents that must not flow; the
logits, V and V Wᵀ are computed once for both (each set adds one rank-B product per gradient it needs), with
full logits and with chunks alike.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rlp_jax.infra.errors import UserError
from rlp_jax.infra.mesh import DATA, MODEL, shard_map


def matmul_dtype(dtype: str):
  """The heads' matmul input type. XLA:CPU has no bf16 x bf16 -> f32 dot (and no bf16 speed-up to
  gain), so there it computes in float32; accelerators use the configured type."""
  return jnp.float32 if jax.default_backend() == "cpu" else jnp.dtype(dtype)


def dense(x: jax.Array, w: jax.Array, b: jax.Array, dtype: str = "float32") -> jax.Array:
  """Per-head dense layer: x (B, D) shared by all heads, or (B, H, D) per head; w (H, D, E).

  Inputs are cast to ``dtype``; the product accumulates and returns in float32.
  """
  eq = "bd,hde->bhe" if x.ndim == 2 else "bhd,hde->bhe"
  dtype = matmul_dtype(dtype)
  return jnp.einsum(eq, x.astype(dtype), w.astype(dtype), preferred_element_type=jnp.float32) + b


def mask_padding(logits: jax.Array, num_valid: int, offset=None) -> jax.Array:
  """-inf for label columns ``offset + j >= num_valid`` (padding of the label axis).

  ``offset`` is the first column's global label (traced inside loops and shard_map); None means 0.
  """
  if offset is None:
    if logits.shape[-1] <= num_valid:
      return logits
    offset = 0
  cols = offset + jnp.arange(logits.shape[-1])
  return jnp.where(cols < num_valid, logits, -jnp.inf)


def head_stats(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array,
  labels: jax.Array,
  *,
  log1m_inputs: tuple[jax.Array, jax.Array, jax.Array] | None = None,
  num_valid: int | None = None,
  dtype: str = "float32",
  chunk: int = 0,
  mesh=None,
  impl: str = "xla",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(ce, log1m, correct), each (B, H), for logits ``x @ kernel + bias``.

  Args:
    x: (B, D) features shared by all heads, or (B, H, D) per head.
    kernel, bias: (H, D, n) and (H, n); labels >= ``num_valid`` are padding (logit -inf).
    labels: (B, H) int random labels.
    log1m_inputs: optional ``(x', kernel', bias')``, equal in value to ``(x, kernel, bias)``, through
      which ``log1m`` is differentiated instead (``ce`` stays a function of ``(x, kernel, bias)``). The
      values are computed once, from the first set; the equality is the caller's promise. This is how
      one evaluation serves two gradient routes (routing.routed_losses) — also when chunked, where two
      separate calls would each run their own backward loop.
    dtype: the matmuls' input type ('bfloat16' on accelerators; CPU falls back to float32).
    chunk: > 0 processes that many labels at a time (it must divide n, or n / model when sharded);
      the backward pass then recomputes each block's logits instead of storing them.
    mesh: when its ``model`` axis has several devices, kernel/bias are sharded over it on n and the batch
      over ``data``; the full logits never exist on one device.
    impl: 'xla' (the blocks below, any mesh) or 'pallas' (pallas_head_loss's fused kernels: one label
      shard; its own tiles, ``chunk`` is not used).
  """
  n = kernel.shape[-1]
  model = mesh.shape[MODEL] if mesh is not None else 1
  n_local = n // model
  if chunk and n_local % chunk:
    raise UserError(
      f"config.rlp.label_chunk={chunk} must divide the labels per device ({n} labels / {model} devices); "
      f"pick a divisor of {n_local}."
    )
  spec = _Spec(
    num_valid=n if num_valid is None else num_valid,
    dt=matmul_dtype(dtype),
    chunk=chunk or n_local,
    per_head=x.ndim == 3,
    axis=MODEL if model > 1 else None,
    store_logits=not chunk,
  )
  if impl == "pallas":
    if model > 1:
      raise UserError(
        f"config.rlp.loss_kernel='pallas' runs on one label shard, but the mesh's model axis is {model}; "
        "use rlp.loss_kernel='xla' with a model axis > 1."
      )
    # Imported here: pallas_head_loss builds on this module (docs/design.md §5).
    from rlp_jax.heads import pallas_head_loss

    fwd = functools.partial(pallas_head_loss.forward, spec=spec)
    bwd = functools.partial(pallas_head_loss.backward_local, spec=spec)
  elif model == 1:
    fwd = functools.partial(_forward, spec=spec)
    bwd = functools.partial(_backward_local, spec=spec)
  else:
    fwd, bwd = _shard_mapped(spec, mesh)
  split = log1m_inputs is not None

  @jax.custom_vjp
  def stats(inputs, labels):
    return fwd(*inputs[0], labels)[0]

  def stats_fwd(inputs, labels):
    out, extras = fwd(*inputs[0], labels)
    return out, (inputs[0], labels, out[0], out[1], extras)

  def stats_bwd(res, cts):
    (x, kernel, bias), labels, ce, log1m, extras = res
    g_ce, g_log1m, _ = cts  # ``correct`` is boolean: no cotangent
    # Per-row scales of V: d ce/ds = (1 - p_y) V, d log1m/ds = p_y V — one scale per input set.
    c_ce, c_log1m = g_ce * jnp.exp(log1m), g_log1m * jnp.exp(-ce)
    scales = (c_ce, c_log1m) if split else (c_ce + c_log1m,)
    grads = zip(*bwd(x, kernel, bias, labels, extras, scales))  # (dx, dkernel, dbias) per input set
    return tuple(tuple(g.astype(d) for g, d in zip(gs, ds)) for gs, ds in zip(grads, dtypes)), None

  stats.defvjp(stats_fwd, stats_bwd)
  inputs = ((x, kernel, bias),) + ((tuple(log1m_inputs),) if split else ())
  shapes = [tuple(a.shape for a in s) for s in inputs]
  if shapes[-1] != shapes[0]:
    raise UserError(f"log1m_inputs must have the shapes {shapes[0]} of (x, kernel, bias), got {shapes[-1]}.")
  dtypes = [tuple(a.dtype for a in s) for s in inputs]  # each set's cotangents in its own dtypes
  return stats(inputs, labels)


class _Spec(NamedTuple):
  """Static settings of one head_stats call."""

  num_valid: int
  dt: Any  # the matmuls' input dtype
  chunk: int  # labels per block (all of this device's labels when not chunking)
  per_head: bool  # x is (B, H, D) rather than (B, D)
  axis: str | None  # the mesh axis the labels are sharded over
  store_logits: bool  # keep the forward's logits for the backward pass (instead of recomputing them)


# ----------------------------------------------------------------------------------------------------
# Per-device pieces (``spec.axis`` names the mesh axis the label axis is sharded over, or is None)
# ----------------------------------------------------------------------------------------------------


def _offset(spec: _Spec, n_local: int):
  """The first global label of this device's shard."""
  return 0 if spec.axis is None else jax.lax.axis_index(spec.axis) * n_local


def _block(a, start, spec: _Spec):
  """Columns [start, start + chunk) of a kernel or bias."""
  return jax.lax.dynamic_slice_in_dim(a, start, spec.chunk, axis=-1)


def _logits(x, kernel, bias, start, spec: _Spec):
  """Columns [start, start + chunk) of this device's logits, float32."""
  return dense(x, _block(kernel, start, spec), _block(bias, start, spec), spec.dt)


def _masked(s, labels, first, spec: _Spec):
  """(s with padding labels at -inf, is_target) for a block whose first column is global label ``first``."""
  cols = first + jnp.arange(s.shape[-1])
  return mask_padding(s, spec.num_valid, first), cols[None, None, :] == labels[..., None]


def _safe(m):
  """A finite shift for exp(): the max of an all-masked row (-inf) shifts by 0 instead."""
  return jnp.where(jnp.isfinite(m), m, 0.0)


def _block_stats(s, is_target, first):
  """What the losses need of one block: the others' (max, sum of exp), the target logit (0 when the
  target is elsewhere), and the block's max and argmax for the accuracy."""
  others = jnp.where(is_target, -jnp.inf, s)
  m_o = others.max(-1)
  return dict(
    m_o=m_o,
    se_o=jnp.exp(others - _safe(m_o)[..., None]).sum(-1),
    t=jnp.where(is_target, s, 0.0).sum(-1),
    best=s.max(-1),
    arg=(jnp.argmax(s, -1) + first).astype(jnp.int32),
  )


def _rescale(m, se, m_new):
  """A sum of exp(s - m) re-expressed as a sum of exp(s - m_new), m_new >= m."""
  return jnp.where(jnp.isfinite(m), se * jnp.exp(m - _safe(m_new)), 0.0)


def _merge(a, b):
  """Statistics of two label blocks, b's labels after a's (online logsumexp; argmax ties keep a's)."""
  m_o = jnp.maximum(a["m_o"], b["m_o"])
  return dict(
    m_o=m_o,
    se_o=_rescale(a["m_o"], a["se_o"], m_o) + _rescale(b["m_o"], b["se_o"], m_o),
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
    se_o=jax.lax.psum(_rescale(st["m_o"], st["se_o"], m_o), axis),
    t=jax.lax.psum(st["t"], axis),
    best=best,
    arg=jax.lax.pmin(jnp.where(st["best"] == best, st["arg"], big), axis),
  )


def _forward(x, kernel, bias, labels, *, spec: _Spec):
  """((ce, log1m, correct), extras): extras = (lse_{≠y},) plus this device's logits if they are kept.

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
  lse_o = _safe(st["m_o"]) + jnp.log(st["se_o"])
  margin = st["t"] - lse_o
  stats = (jax.nn.softplus(-margin), -jax.nn.softplus(margin), st["arg"] == labels)
  return stats, ((lse_o, s) if spec.store_logits else (lse_o,))


def _dxs(vw, scales, spec: _Spec):
  """dx = c ⊙ V Wᵀ per scale c, summed over heads when they share x: V Wᵀ serves every scale."""
  return tuple(c[..., None] * vw if spec.per_head else (c[..., None] * vw).sum(1) for c in scales)


def _backward_local(x, kernel, bias, labels, extras, scales, *, spec: _Spec):
  """(dxs, dkernels, dbiases) on one device: one of each per scale."""
  vw, dks, dbs = _backward(x, kernel, bias, labels, extras, scales, spec=spec)
  return _dxs(vw, scales, spec), dks, dbs


def _backward(x, kernel, bias, labels, extras, scales, *, spec: _Spec):
  """(V Wᵀ, dkernels, dbiases) on this device, for logit gradients ``c ⊙ V``, one per scale c in
  ``scales``: dW = (c ⊙ x)ᵀ V, db = cᵀ V. V Wᵀ (B, H, D) is shared by all scales (see _dxs); with
  a sharded label axis it is the sum over this device's labels only."""
  lse_o = extras[0]
  n_local = kernel.shape[-1]
  base = _offset(spec, n_local)
  xs = x if spec.per_head else x[:, None, :]
  xcs = tuple((c[..., None] * xs).astype(spec.dt) for c in scales)  # (B, H, D) each

  def block(s, start):
    s, is_target = _masked(s, labels, base + start, spec)
    v = jnp.where(is_target, -1.0, jnp.exp(s - lse_o[..., None]))  # V = q - e_y
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


def _shard_mapped(spec: _Spec, mesh):
  """_forward and _backward as shard_maps over the mesh: labels over ``model``, the batch over ``data``."""
  x_spec = P(DATA, None, None) if spec.per_head else P(DATA, None)
  rows, k_spec, b_spec = P(DATA, None), P(None, None, MODEL), P(None, MODEL)
  extras_spec = (rows, P(DATA, None, MODEL)) if spec.store_logits else (rows,)
  fwd = shard_map(
    functools.partial(_forward, spec=spec),
    mesh=mesh,
    in_specs=(x_spec, k_spec, b_spec, rows),
    out_specs=((rows, rows, rows), extras_spec),
  )

  def bwd(x, kernel, bias, labels, extras, scales):
    def local(x, kernel, bias, labels, extras, scales):  # this device's blocks
      vw, dks, dbs = _backward(x, kernel, bias, labels, extras, scales, spec=spec)
      # dx: summed over the label shards — V Wᵀ once with per-head x, else each (B, D) dx (H times
      # smaller; one that is not needed is dropped). dW, db: summed over the batch shards.
      if spec.per_head:
        dxs = _dxs(jax.lax.psum(vw, MODEL), scales, spec)
      else:
        dxs = tuple(jax.lax.psum(dx, MODEL) for dx in _dxs(vw, scales, spec))
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
