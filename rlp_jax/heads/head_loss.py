"""The statistics of an RLP head's softmax over its label axis, and their exact hand-written gradient.

For logits ``s = x @ W + b`` over n labels and a random label y, per example and head:

  ce      = lse(s) - s_y                      (L_rnd's cross-entropy)
  log1m   = lse(s_{j≠y}) - lse(s)             (log(1 - p_y), L_reg = -log1m; stable when p_y → 1)
  correct = argmax(s) == y

The label axis may be *chunked* (``label_chunk`` labels at a time: the (B, H, n) logits never exist whole) and
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

This module holds the custom VJP and the choice of backend; the backends compute per device:
head_loss_xla (label blocks, any mesh) and head_loss_pallas (fused GPU kernels, one label shard). What
all three share is label_axis's.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp

from rlp_jax.heads import head_loss_pallas, head_loss_xla
from rlp_jax.heads.label_axis import HeadStats, Spec, matmul_dtype
from rlp_jax.infra.errors import UserError
from rlp_jax.infra.mesh import MODEL


def head_stats(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array,
  labels: jax.Array,
  *,
  log1m_inputs: tuple[jax.Array, jax.Array, jax.Array] | None = None,
  num_valid: int | None = None,
  dtype: str = "float32",
  label_chunk: int = 0,
  mesh=None,
  loss_kernel: str = "xla",
) -> HeadStats:
  """HeadStats (ce, log1m, correct), each (B, H), for logits ``x @ kernel + bias``.

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
    label_chunk: > 0 processes that many labels at a time (it must divide n, or n / model when
      sharded); the backward pass then recomputes each block's logits instead of storing them.
    mesh: when its ``model`` axis has several devices, kernel/bias are sharded over it on n and the batch
      over ``data``; the full logits never exist on one device.
    loss_kernel: 'xla' (head_loss_xla: any mesh) or 'pallas' (head_loss_pallas's fused kernels: one
      label shard; its own tiles, ``label_chunk`` is not used).
  """
  n = kernel.shape[-1]
  model = mesh.shape[MODEL] if mesh is not None else 1
  n_local = n // model
  if label_chunk and n_local % label_chunk:
    raise UserError(
      f"config.rlp.label_chunk={label_chunk} must divide the labels per device ({n} labels / {model} "
      f"devices); pick a divisor of {n_local}."
    )
  spec = Spec(
    num_valid=n if num_valid is None else num_valid,
    dt=matmul_dtype(dtype),
    chunk=label_chunk or n_local,
    per_head=x.ndim == 3,
    axis=MODEL if model > 1 else None,
    store_logits=not label_chunk,
  )
  fwd, bwd = _backend(loss_kernel, spec, mesh, model)
  inputs = ((x, kernel, bias),) + (() if log1m_inputs is None else (tuple(log1m_inputs),))
  shapes = [tuple(a.shape for a in s) for s in inputs]
  if shapes[-1] != shapes[0]:
    raise UserError(f"log1m_inputs must have the shapes {shapes[0]} of (x, kernel, bias), got {shapes[-1]}.")
  dtypes = [tuple(a.dtype for a in s) for s in inputs]  # each set's cotangents in its own dtypes

  @jax.custom_vjp
  def stats(inputs, labels):
    return fwd(*inputs[0], labels)[0]

  def stats_fwd(inputs, labels):
    out, extras = fwd(*inputs[0], labels)
    return out, (inputs[0], labels, out.ce, out.log1m, extras)

  def stats_bwd(res, cts):
    (x, kernel, bias), labels, ce, log1m, extras = res
    # Per-row scales of V: d ce/ds = (1 - p_y) V, d log1m/ds = p_y V — one scale per input set.
    # (``correct`` is boolean: it has no cotangent.)
    c_ce, c_log1m = cts.ce * jnp.exp(log1m), cts.log1m * jnp.exp(-ce)
    scales = (c_ce, c_log1m) if len(inputs) == 2 else (c_ce + c_log1m,)
    grads = zip(*bwd(x, kernel, bias, labels, extras, scales))  # (dx, dkernel, dbias) per input set
    return tuple(tuple(g.astype(d) for g, d in zip(gs, ds)) for gs, ds in zip(grads, dtypes)), None

  stats.defvjp(stats_fwd, stats_bwd)
  return stats(inputs, labels)


def _backend(loss_kernel: str, spec: Spec, mesh, model: int):
  """(forward, backward) of the chosen backend, per device or shard-mapped over the mesh."""
  if loss_kernel == "pallas":
    if model > 1:
      raise UserError(
        f"config.rlp.loss_kernel='pallas' runs on one label shard, but the mesh's model axis is {model}; "
        "use rlp.loss_kernel='xla' with a model axis > 1."
      )
    _warn_untuned_once()
    return (
      functools.partial(head_loss_pallas.forward, spec=spec),
      functools.partial(head_loss_pallas.backward_local, spec=spec),
    )
  if model == 1:
    return (
      functools.partial(head_loss_xla.forward, spec=spec),
      functools.partial(head_loss_xla.backward_local, spec=spec),
    )
  return head_loss_xla.sharded(spec, mesh)


@functools.cache
def _warn_untuned_once() -> None:
  if not head_loss_pallas.TUNED:
    warnings.warn(
      "rlp.loss_kernel='pallas': the fused kernels' tile sizes have not been timed on a GPU yet "
      "(docs/design.md §5); 'xla' is the measured path.",
      stacklevel=4,
    )
