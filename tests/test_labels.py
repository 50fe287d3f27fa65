"""Label hashing: stable, uniform, epoch-dependent only when asked, bijective where promised."""

from __future__ import annotations

import numpy as np
import pytest

from rlp_jax.data import labels


def test_same_label_for_same_index_in_any_order():
  idx = np.arange(5000)
  perm = np.random.default_rng(1).permutation(idx)
  base = labels.random_labels(3, idx, 100, num_heads=4)
  shuffled = labels.random_labels(3, perm, 100, num_heads=4)
  np.testing.assert_array_equal(shuffled, base[perm])
  # Element-wise: a batch of one gives the same answer as the whole array (no hidden state).
  assert labels.random_labels(3, np.array([4321]), 100, num_heads=4)[0].tolist() == base[4321].tolist()


def test_labels_are_pinned_across_versions():
  # A change of the hash would silently change every saved experiment's labels: pin a few values.
  assert labels.random_labels(0, np.arange(6), 10).ravel().tolist() == [4, 8, 8, 2, 1, 4]
  assert labels.random_labels(0, np.arange(6), 1000, 2).ravel().tolist() == [
    814,
    544,
    518,
    861,
    918,
    950,
    442,
    87,
    71,
    100,
    304,
    385,
  ]


@pytest.mark.parametrize("n", [2, 10, 1000])
def test_near_uniform_chi_square(n):
  m = 200 * n
  y = labels.random_labels(7, np.arange(m), n, num_heads=2)
  for k in range(2):
    counts = np.bincount(y[:, k], minlength=n)
    chi2 = ((counts - m / n) ** 2 / (m / n)).sum()
    # chi-square with n-1 dof: mean n-1, sd sqrt(2(n-1)); 6 sd is a bound a broken hash cannot meet.
    assert chi2 < (n - 1) + 6 * np.sqrt(2 * (n - 1)), (n, k, chi2)


def test_heads_and_seeds_are_independent():
  idx = np.arange(20000)
  y = labels.random_labels(0, idx, 10, num_heads=2)
  agree = (y[:, 0] == y[:, 1]).mean()
  assert abs(agree - 0.1) < 0.01
  other_seed = labels.random_labels(1, idx, 10)[:, 0]
  assert abs((other_seed == y[:, 0]).mean() - 0.1) < 0.01


def test_shuffled_mode_changes_every_epoch_and_fixed_does_not():
  idx = np.arange(10000)
  e0 = labels.random_labels(0, idx, 10, mode="shuffled", epoch=0)
  e1 = labels.random_labels(0, idx, 10, mode="shuffled", epoch=1)
  assert abs((e0 == e1).mean() - 0.1) < 0.02
  np.testing.assert_array_equal(e0, labels.random_labels(0, idx, 10, mode="shuffled", epoch=0))
  np.testing.assert_array_equal(
    labels.random_labels(0, idx, 10, epoch=0), labels.random_labels(0, idx, 10, epoch=5)
  )


@pytest.mark.parametrize("m", [2, 3, 7, 1000, 4097, 65537])
def test_unique_mode_is_a_bijection(m):
  y = labels.random_labels(5, np.arange(m), m, num_heads=2, mode="unique", num_examples=m)
  for k in range(2):
    assert sorted(y[:, k].tolist()) == list(range(m))
  if m > 100:
    assert (y[:, 0] != np.arange(m)).mean() > 0.9  # not the identity
    assert (y[:, 0] != y[:, 1]).mean() > 0.9  # heads get different permutations


def test_unique_mode_requires_n_equal_m():
  with pytest.raises(ValueError, match="num_labels"):
    labels.random_labels(0, np.arange(10), 5, mode="unique", num_examples=10)


def test_bad_mode_and_num_labels():
  with pytest.raises(ValueError, match="label_mode"):
    labels.random_labels(0, np.arange(3), 10, mode="sorted")
  with pytest.raises(ValueError, match="num_labels"):
    labels.random_labels(0, np.arange(3), 1)


def test_label_noise_rate_and_purity():
  idx = np.arange(50000)
  clean = (idx * 7) % 10
  noisy, is_noisy = labels.noisy_labels(0, idx, clean, 10, 0.3)
  assert abs(is_noisy.mean() - 0.3) < 0.01
  np.testing.assert_array_equal(noisy != clean, is_noisy)  # a corrupted label is always wrong
  assert set(np.unique(noisy[is_noisy])) == set(range(10))
  perm = np.random.default_rng(0).permutation(len(idx))
  np.testing.assert_array_equal(labels.noisy_labels(0, idx[perm], clean[perm], 10, 0.3)[0], noisy[perm])
  np.testing.assert_array_equal(labels.noisy_labels(0, idx, clean, 10, 0.0)[0], clean)
  with pytest.raises(ValueError, match="label_noise"):
    labels.noisy_labels(0, idx, clean, 10, 1.0)


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.999, 1.0])
def test_fraction_selects_exactly_floor_f_m(fraction):
  m = 12345
  mask = labels.fraction_mask(3, m, fraction)
  assert mask.sum() == int(np.floor(fraction * m))
  np.testing.assert_array_equal(mask, labels.fraction_mask(3, m, fraction))


def test_fractions_are_nested_and_seeded():
  small, large = labels.fraction_mask(0, 5000, 0.2), labels.fraction_mask(0, 5000, 0.6)
  assert np.all(large[small])
  assert (labels.fraction_mask(1, 5000, 0.2) != small).any()
  with pytest.raises(ValueError, match="dataset_fraction"):
    labels.fraction_mask(0, 100, 0.0)
