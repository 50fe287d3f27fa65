"""What both head-loss backends share: the output layer, its padded label axis, and the call's settings.

head_loss.head_stats picks a backend (head_loss_xla or head_loss_pallas) and owns the custom VJP; the
backends compute the forward statistics and the backward products per device. The pieces below sit
beneath all three, so no backend imports head_loss (docs/design.md §3).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class HeadStats(NamedTuple):
  """Per example and head, each (B, H): the statistics every loss and accuracy of a head is made of."""

  ce: jax.Array  # CE(s, ŷ) = lse(s) - s_ŷ: L_rnd's cross-entropy
  log1m: jax.Array  # log(1 - p̂_ŷ): L_reg = -log1m (stable when p̂_ŷ -> 1)
  correct: jax.Array  # argmax(s) == ŷ


class Spec(NamedTuple):
  """Static settings of one head_stats call, as the backends read them."""

  num_valid: int  # labels >= num_valid are padding (logit -inf)
  dt: Any  # the matmuls' input dtype
  chunk: int  # labels per block (all of this device's labels when not chunking)
  per_head: bool  # x is (B, H, D) rather than (B, D)
  axis: str | None  # the mesh axis the labels are sharded over
  store_logits: bool  # keep the forward's logits for the backward pass (instead of recomputing them)


def matmul_dtype(dtype: str):
  """The heads' matmul input type: float32 on XLA:CPU (no bf16 x bf16 -> f32 dot there), else ``dtype``."""
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


def finite_shift(m: jax.Array) -> jax.Array:
  """A finite shift for exp(): the max of an all-masked row (-inf) shifts by 0 instead."""
  return jnp.where(jnp.isfinite(m), m, 0.0)


def rescale(m: jax.Array, se: jax.Array, m_new: jax.Array) -> jax.Array:
  """A sum of exp(s - m) re-expressed as a sum of exp(s - m_new), m_new >= m (online logsumexp)."""
  return jnp.where(jnp.isfinite(m), se * jnp.exp(m - finite_shift(m_new)), 0.0)


def logit_grad(s: jax.Array, is_target: jax.Array, lse_o: jax.Array) -> jax.Array:
  """V = q - e_y of a block of logits: exp(s - lse_{≠y}) off the target, -1 on it (lse_o per row)."""
  return jnp.where(is_target, -1.0, jnp.exp(s - lse_o[..., None]))


def stats_from_margin(t: jax.Array, lse_o: jax.Array, arg: jax.Array, labels: jax.Array) -> HeadStats:
  """HeadStats from the target logit t, the logsumexp of the others and the argmax column.

  With the margin d = t - lse_{≠y}: ce = softplus(-d), log(1 - p_y) = -softplus(d), exact and stable at any
  margin (head_loss_xla.forward derives it).
  """
  margin = t - lse_o
  return HeadStats(ce=jax.nn.softplus(-margin), log1m=-jax.nn.softplus(margin), correct=arg == labels)


def dx_from_vw(vw: jax.Array, scales, spec: Spec) -> tuple[jax.Array, ...]:
  """dx = c ⊙ V Wᵀ per scale c, summed over heads when they share x: V Wᵀ serves every scale."""
  return tuple(c[..., None] * vw if spec.per_head else (c[..., None] * vw).sum(1) for c in scales)
