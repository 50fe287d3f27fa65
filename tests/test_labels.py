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


@pytest.mark.parametrize(
  "m, rate, seed, fraction",
  [(1437, 0.2, 0, 1.0), (1437, 0.2, 1, 1.0), (1437, 0.29, 2, 1.0), (100, 0.29, 0, 1.0), (12345, 0.5, 3, 1.0)]
  + [(7, 0.5, 0, 1.0), (50000, 0.01, 4, 1.0), (1437, 0.3, 0, 0.5), (5000, 0.2, 1, 0.37)],
)
def test_label_noise_flips_exactly_floor_p_m_of_the_trained_on_examples(m, rate, seed, fraction):
  """⌊p·m'⌋ exactly, m' = ⌊f·m⌋ trained-on examples (digits: m = 1437 -> 287 at p = 0.2 for every seed;
  p = 0.29 of 100 is 29: the rate is read as the decimal written, not as the float just below it)."""
  idx = np.arange(m)
  selected = labels.fraction_mask(seed, m, fraction)
  want = {(100, 0.29): 29, (1437, 0.2): 287}.get((m, rate), int(rate * int(fraction * m)))
  assert labels.exact_count(rate, labels.exact_count(fraction, m)) == want
  mask = labels.noise_mask(seed, idx, rate, num_examples=m, fraction=fraction)
  assert mask.sum() == mask[selected].sum() == want  # never an example outside the fraction
  clean = (idx * 7) % 10
  noisy, is_noisy = labels.noisy_labels(seed, idx, clean, 10, rate, num_examples=m, fraction=fraction)
  np.testing.assert_array_equal(is_noisy, mask)
  np.testing.assert_array_equal(noisy != clean, mask)  # a corrupted label is always wrong, the rest kept


def test_label_noise_is_nested_across_rates_and_seeded():
  idx, m = np.arange(1437), 1437
  for fraction in (1.0, 0.6):
    masks = [
      labels.noise_mask(0, idx, p, num_examples=m, fraction=fraction) for p in (0.0, 0.05, 0.2, 0.5, 0.9)
    ]
    assert not masks[0].any()
    for low, high in zip(masks, masks[1:]):
      assert np.all(high[low]) and high.sum() > low.sum()
  other = labels.noise_mask(1, idx, 0.2, num_examples=m)
  assert other.sum() == 287 and (other != labels.noise_mask(0, idx, 0.2, num_examples=m)).any()
  with pytest.raises(ValueError, match="label_noise"):
    labels.noise_mask(0, idx, 1.0, num_examples=m)


def test_label_noise_is_a_pure_function_of_the_index():
  """Any order and any split into hosts/batches give the same labels; so do repeated calls."""
  m, rate = 20000, 0.3
  idx = np.arange(m)
  clean = (idx * 3) % 10
  kw = dict(num_examples=m, fraction=0.75)
  whole, is_noisy = labels.noisy_labels(5, idx, clean, 10, rate, **kw)
  perm = np.random.default_rng(0).permutation(m)
  np.testing.assert_array_equal(
    labels.noisy_labels(5, idx[perm], clean[perm], 10, rate, **kw)[0], whole[perm]
  )
  for part in np.array_split(perm, 7):  # e.g. hosts reading disjoint slices in a shuffled order
    got, got_noisy = labels.noisy_labels(5, idx[part], clean[part], 10, rate, **kw)
    np.testing.assert_array_equal(got, whole[part])
    np.testing.assert_array_equal(got_noisy, is_noisy[part])
  np.testing.assert_array_equal(labels.noisy_labels(5, idx, clean, 10, rate, **kw)[0], whole)
  np.testing.assert_array_equal(labels.noisy_labels(5, idx, clean, 10, 0.0, **kw)[0], clean)


def test_noisy_label_is_uniform_over_the_other_classes():
  m, classes = 60000, 10
  idx = np.arange(m)
  clean = idx % classes
  noisy, is_noisy = labels.noisy_labels(0, idx, clean, classes, 0.5, num_examples=m)
  shift = (noisy[is_noisy] - clean[is_noisy]) % classes
  counts = np.bincount(shift, minlength=classes)
  assert counts[0] == 0  # never the true class
  expected = is_noisy.sum() / (classes - 1)
  chi2 = ((counts[1:] - expected) ** 2 / expected).sum()
  assert chi2 < 27.9  # chi-square, 8 degrees of freedom, p = 0.0005


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.999, 1.0])
def test_fraction_selects_exactly_floor_f_m(fraction):
  m = 12345
  mask = labels.fraction_mask(3, m, fraction)
  assert mask.sum() == int(np.floor(fraction * m)) == labels.exact_count(fraction, m)
  np.testing.assert_array_equal(mask, labels.fraction_mask(3, m, fraction))


def test_fractions_are_nested_and_seeded():
  small, large = labels.fraction_mask(0, 5000, 0.2), labels.fraction_mask(0, 5000, 0.6)
  assert np.all(large[small])
  assert (labels.fraction_mask(1, 5000, 0.2) != small).any()
  with pytest.raises(ValueError, match="dataset_fraction"):
    labels.fraction_mask(0, 100, 0.0)
