"""heads/ridge_probe.py: the converged probe is the limit of gradient training, blind to feature scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rlp_jax.heads import ridge_probe


def _problem(m=40, d=5, n=4, heads=2, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(m, d)).astype(np.float32) * rng.uniform(0.1, 10, size=d).astype(np.float32) + 3.0
  y = rng.integers(0, n, size=(m, heads)).astype(np.int32)
  return x, y, n


def test_closed_form_equals_gradient_descent_at_convergence():
  """Gradient descent on the squared loss of the one-hot labels, with the same ridge, started at zero,
  converges to the closed-form weights; the predictions (correct, margin) are then the same too."""
  x, y, n = _problem()
  ridge = 1e-2
  probe = ridge_probe.fit(x, y, n, ridge)
  xa = np.asarray(ridge_probe.design(jnp.asarray(x), probe.mean, probe.scale), np.float64)
  m = len(x)
  targets = np.eye(n)[y].transpose(1, 0, 2)  # (H, M, n)
  w = np.zeros((y.shape[1], xa.shape[1], n))
  lipschitz = np.linalg.eigvalsh(xa.T @ xa).max() + ridge * m
  for _ in range(20_000):
    grad = np.einsum("md,hmn->hdn", xa, np.einsum("md,hdn->hmn", xa, w) - targets) + ridge * m * w
    w -= grad / lipschitz
  np.testing.assert_allclose(np.asarray(probe.weights), w, rtol=2e-3, atol=2e-4)
  trained = ridge_probe.Probe(probe.mean, probe.scale, jnp.asarray(w, jnp.float32))
  a, b = ridge_probe.own_label_stats(probe, x, y), ridge_probe.own_label_stats(trained, x, y)
  np.testing.assert_array_equal(a["correct"], b["correct"])
  np.testing.assert_allclose(a["margin"], b["margin"], atol=1e-3)
  # Not a vacuous fit: some labels right, some wrong.
  assert 0.2 < a["correct"].mean() < 1.0


def test_accuracy_does_not_depend_on_feature_scale_or_shift():
  """Standardization first: rescaling or shifting any feature leaves the probe's accuracy unchanged (a
  trained head's reach in a fixed budget does change with scale, docs/design.md §4)."""
  x, y, n = _problem(m=200, d=20, n=10, seed=1)
  base = ridge_probe.accuracy(x, y, n)
  scaled = x * np.geomspace(1e-3, 1e3, x.shape[1]).astype(np.float32) - 7.0
  np.testing.assert_allclose(ridge_probe.accuracy(scaled, y, n), base, atol=1 / 200)
  assert (base > 1 / n).all()


def test_features_that_span_the_examples_fit_every_label():
  """D + 1 >= M: the standardized features (plus bias) shatter the set, whatever the labels; with far
  fewer features than examples the fit is partial."""
  x, y, n = _problem(m=30, d=40, n=7, seed=2)
  np.testing.assert_array_equal(ridge_probe.accuracy(x, y, n), 1.0)
  x, y, n = _problem(m=300, d=3, n=7, seed=3)
  assert (ridge_probe.accuracy(x, y, n) < 0.5).all()


def test_wide_relu_features_at_the_default_ridge_fit_every_label():
  """D + 1 > M with dead (constant) ReLU features, at the default tiny ridge: a Gram far beyond float32's
  reach. The fit must still interpolate (accuracy 1), not return NaN weights and label 0's share."""
  rng = np.random.default_rng(5)
  x = np.maximum(rng.normal(size=(300, 512)) @ rng.normal(size=(512, 512)) / 20 - 0.5, 0).astype(np.float32)
  y = rng.integers(0, 10, size=(300, 1))
  probe = ridge_probe.fit(x, y, 10)
  assert np.isfinite(np.asarray(probe.weights)).all()
  np.testing.assert_array_equal(ridge_probe.accuracy(x, y, 10), 1.0)


def test_own_label_stats_match_explicit_scores_in_chunks():
  x, y, n = _problem(m=50, d=6, n=5, seed=4)
  probe = ridge_probe.fit(x, y, n)
  s = np.einsum(
    "md,hdn->mhn", np.asarray(ridge_probe.design(jnp.asarray(x), probe.mean, probe.scale)), probe.weights
  )
  stats = ridge_probe.own_label_stats(probe, x, y, row_chunk=7)
  np.testing.assert_array_equal(stats["correct"], s.argmax(-1) == y)
  own = np.take_along_axis(s, y[..., None], -1)[..., 0]
  others = np.where(np.arange(n) == y[..., None], -np.inf, s).max(-1)
  np.testing.assert_allclose(stats["margin"], own - others, rtol=1e-5, atol=1e-6)
  assert jax.numpy.all(jnp.asarray(stats["margin"] > 0) == jnp.asarray(stats["correct"]))
