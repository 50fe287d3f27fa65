"""The converged capacity probe: a linear fit of random labels in closed form (docs/design.md §4).

A trained RLP head's accuracy depends on two things besides the features' content: their scale (Adam moves
a weight by about its learning rate per step, so small features need more steps) and the head's step
budget. This probe removes both. It standardizes each feature over the probed set (an affine map, so the
hypothesis class of the plain linear head), then fits every random label one-vs-rest by ridge regression,

    W = (Xᵀ X + α I)⁻¹ Xᵀ Y,   X = [standardized features, 1] (M, D + 1),   Y = one-hot(ŷ) (M, n),

exactly, in one float64 solve: the point gradient descent on the squared loss converges to, whatever its
budget
(``tests/test_ridge_probe.py`` checks that). Its accuracy is ``argmax(X W) == ŷ`` on the M examples fitted.
Xᵀ Y is a sum of the rows by label, so the (M, n) one-hot never exists; the (M, n) scores are formed on the
device, ``row_chunk`` rows at a time, at full float32 precision.

What it measures: how far the *span* of a layer's features lets a linear map separate each example's
random class from the others, on the examples it was fitted to; with D + 1 >= M it fits every label
(the features shatter the set), so it is read against the same probe on the initial network.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

# α relative to M (the diagonal of XᵀX for standardized features): a tiny ridge, enough to make a rank-
# deficient Gram (dead ReLU features, D + 1 > M) solvable while leaving a full-rank fit at least squares.
DEFAULT_RIDGE = 1e-6


class Probe(NamedTuple):
  """A fitted probe: the standardization (mean, scale), (D,) each, and the weights (H, D + 1, n)."""

  mean: jax.Array
  scale: jax.Array
  weights: jax.Array


def design(x: jax.Array, mean: jax.Array, scale: jax.Array) -> jax.Array:
  """[(x - mean) / scale, 1]: the standardized features with a bias column, in float32."""
  xs = (x.astype(jnp.float32) - mean) / scale
  return jnp.concatenate([xs, jnp.ones((x.shape[0], 1), jnp.float32)], axis=1)


def standardization(x) -> tuple[np.ndarray, np.ndarray]:
  """Per-feature (mean, scale) of (M, D) features over the M examples, in float64, that z-score them.

  A feature constant over the set (std below 1e-6 of its size) gets scale 1: its standardized value is 0.
  The probe and the offline heads with ``offline.standardize`` (training/offline_heads.py) both use it.
  """
  x = np.asarray(x, np.float64)
  mean, std = x.mean(0), x.std(0)
  return mean, np.where(std > 1e-6 * (np.abs(mean) + 1.0), std, 1.0)


def fit(x, labels, num_labels: int, ridge: float = DEFAULT_RIDGE) -> Probe:
  """Closed-form ridge fit of ``labels`` (M, H) from features ``x`` (M, D), one-vs-rest over n labels.

  Solved in float64 on the host (the (D + 1)² Gram is small): with D + 1 near or above M the Gram's
  condition number reaches ~1e6·D, which float32 cannot factor (a Cholesky that silently returns NaN).
  Features constant over the set get scale 1 (their standardized value is 0 and carries nothing)."""
  x = np.asarray(x, np.float64)
  labels = np.asarray(labels)
  mean, scale = standardization(x)
  xa = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], axis=1)
  m, d = xa.shape
  chol = scipy.linalg.cho_factor(xa.T @ xa + ridge * m * np.eye(d))
  weights = np.empty((labels.shape[1], d, num_labels), np.float32)
  for h in range(labels.shape[1]):
    # Xᵀ Y without the one-hot: column c of Xᵀ Y is the sum of the rows whose label is c.
    xty = np.zeros((num_labels, d))
    np.add.at(xty, labels[:, h], xa)
    weights[h] = scipy.linalg.cho_solve(chol, xty.T)
  if not np.isfinite(weights).all():
    raise FloatingPointError("the ridge probe's solve gave non-finite weights")
  return Probe(jnp.asarray(mean, jnp.float32), jnp.asarray(scale, jnp.float32), jnp.asarray(weights))


@jax.jit
def _own_label_stats(probe: Probe, x: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  s = jnp.einsum(
    "md,hdn->mhn", design(x, probe.mean, probe.scale), probe.weights, precision=jax.lax.Precision.HIGHEST
  )
  own = jnp.take_along_axis(s, labels[..., None], -1)[..., 0]
  others = jnp.where(jnp.arange(s.shape[-1]) == labels[..., None], -jnp.inf, s)
  return jnp.argmax(s, -1) == labels, own - others.max(-1)


def own_label_stats(probe: Probe, x, labels, *, row_chunk: int = 4096) -> dict[str, np.ndarray]:
  """Per example and head (M, H): ``correct`` and ``margin`` of the own label.

  ``correct``: argmax == own label, ties to the lowest label; ``margin``: the own label's score minus the
  largest other. Computed from ``row_chunk`` rows of (·, H, n) scores at a time.
  """
  parts = [
    _own_label_stats(probe, jnp.asarray(x[s : s + row_chunk]), jnp.asarray(labels[s : s + row_chunk]))
    for s in range(0, len(labels), row_chunk)
  ]
  return {
    "correct": np.concatenate([np.asarray(c) for c, _ in parts]),
    "margin": np.concatenate([np.asarray(m, np.float64) for _, m in parts]),
  }


def accuracy(x, labels, num_labels: int, *, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
  """Random-label accuracy per head (H,) of the probe fitted to ``(x, labels)``, on those examples."""
  probe = fit(x, labels, num_labels, ridge)
  return own_label_stats(probe, x, labels)["correct"].mean(0)
