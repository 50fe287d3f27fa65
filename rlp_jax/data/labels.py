"""Everything that is a pure function of (seed, example index): random labels, label noise, fractions.

docs/design.md §2: every training example has a stable global index ``i``; the random label of head ``k`` is
``H(seed, k, i) mod n``. No label table is stored, so every host, every restart and every shuffle order
computes the same labels, and memory does not grow with the dataset (ImageNet with n = m included).

All functions are vectorized NumPy over uint32 arithmetic (wrap-around multiplication is the point of
the hash, and NumPy does it silently on arrays). They run in the input pipeline on host, never on device.

Streams: each use of the hash takes its own ``purpose`` constant (infra/streams.py), so e.g. which
examples get a noisy label is independent of their random labels.

Exact subsets (dataset fraction, label noise) are keyed rankings: a keyed bijection π on ``[0, m)`` ranks
the examples and the ``⌊f·m⌋`` lowest are chosen — exact in size, nested across rates, and still a pure
function of the index given ``m`` (docs/design.md §2).
"""

from __future__ import annotations

import fractions
import math

import numpy as np

from rlp_jax.infra import streams
from rlp_jax.infra.configuration import LABEL_MODES
from rlp_jax.infra.errors import UserError

# In ``shuffled`` mode training epoch e draws its labels with key e + 1 >= 1; this epoch's key, 0, is never
# trained on: the held-out draw the per-epoch evaluation scores against (docs/design.md §4).
HELD_OUT_EPOCH = -1


def _fmix32(h: np.ndarray) -> np.ndarray:
  """MurmurHash3's 32-bit finalizer: a bijection on uint32 with full avalanche."""
  h = h ^ (h >> np.uint32(16))
  h = h * np.uint32(0x85EBCA6B)
  h = h ^ (h >> np.uint32(13))
  h = h * np.uint32(0xC2B2AE35)
  return h ^ (h >> np.uint32(16))


def hash32(*keys) -> np.ndarray:
  """Well-mixed uint32 hash of a sequence of integer keys (scalars or broadcastable arrays).

  Each key is folded in with a multiply-xor followed by the murmur finalizer, so changing any key,
  in any position, changes the output as if drawn afresh. Keys must be non-negative and < 2**32.
  """
  h = np.uint32(0x9E3779B9)
  with np.errstate(over="ignore"):  # uint32 wrap-around is intended
    for key in keys:
      k = np.asarray(key)
      if k.dtype.kind not in "iu":
        raise TypeError(f"hash keys must be integers, got {k.dtype}")
      h = _fmix32((h ^ (k.astype(np.uint32) * np.uint32(0xCC9E2D51))) + np.uint32(0x6B43A9B5))
  return np.asarray(h, dtype=np.uint32)


def random_labels(
  seed: int,
  index,
  num_labels: int,
  num_heads: int = 1,
  *,
  mode: str = "fixed",
  epoch: int = 0,
  num_examples: int | None = None,
) -> np.ndarray:
  """Random labels ``ŷ_k(i)`` for every head k, shape ``index.shape + (num_heads,)``, int32.

  Modes (docs/design.md §2):
    fixed:    ``H(seed, k, i) mod n`` — the paper's default; the same labels every epoch.
    shuffled: ``H(seed, k, epoch + 1, i) mod n`` — new labels each epoch (A.2 sanity check: nothing to
              memorize); ``epoch = HELD_OUT_EPOCH`` gives the draw no training epoch uses.
    unique:   ``π_k(i)`` for a keyed bijection π_k on ``[0, m)``: every example its own label (A.5), so
              ``num_labels`` must equal ``num_examples`` = m.
  """
  index = np.asarray(index)
  if num_labels < 2:
    raise UserError(f"config.rlp.num_labels must be >= 2, got {num_labels}.")
  heads = np.arange(num_heads, dtype=np.uint32)
  idx = index[..., None]
  if mode == "fixed":
    h = hash32(seed, streams.RANDOM_LABEL, heads, idx)
  elif mode == "shuffled":
    if epoch < -1:  # the key epoch + 1 must be a valid (non-negative) hash key
      raise ValueError(f"shuffled labels exist for epochs >= -1 (HELD_OUT_EPOCH), got {epoch}")
    h = hash32(seed, streams.RANDOM_LABEL, heads, epoch + 1, idx)
  elif mode == "unique":
    if num_examples is None or num_labels != num_examples:
      raise UserError(
        "label_mode='unique' needs num_labels == number of training examples "
        f"(got num_labels={num_labels}, num_examples={num_examples})."
      )
    out = np.stack(
      [
        keyed_permutation(hash32(seed, streams.RANDOM_LABEL, k), index, num_examples)
        for k in range(num_heads)
      ],
      axis=-1,
    )
    return out.astype(np.int32)
  else:
    raise UserError(f"config.rlp.label_mode must be one of {LABEL_MODES}, got {mode!r}.")
  return (h % np.uint32(num_labels)).astype(np.int32)


def keyed_permutation(key, index, size: int) -> np.ndarray:
  """``π_key(i)``: a pseudo-random bijection on ``[0, size)``, evaluated without any table.

  A 4-round balanced Feistel network permutes ``[0, 2**(2b))`` with ``4**b >= size``; cycle-walking
  (re-applying it while the value falls outside ``[0, size)``) restricts it to a bijection on
  ``[0, size)``. Since ``4**b < 4 * size``, the expected number of walks per element is below 4.
  """
  index = np.asarray(index, dtype=np.int64)
  if size < 1 or np.any((index < 0) | (index >= size)):
    raise UserError(f"indices must lie in [0, {size}).")
  half_bits = max(1, int(np.ceil(np.log2(max(size, 2)) / 2)))
  mask = np.uint32((1 << half_bits) - 1)
  key = np.uint32(key)

  def feistel(x: np.ndarray) -> np.ndarray:
    left = (x >> np.uint32(half_bits)) & mask
    right = x & mask
    for r in range(4):
      left, right = right, left ^ (hash32(key, streams.BIJECTION, r, right) & mask)
    return (left << np.uint32(half_bits)) | right

  x = feistel(index.astype(np.uint32))
  outside = x >= size
  while np.any(outside):
    x[outside] = feistel(x[outside])
    outside = x >= size
  return x.astype(np.int64)


def exact_count(rate: float, num_examples: int) -> int:
  """``⌊rate·m⌋`` with ``rate`` read as the decimal it is written as: 0.29 of 100 is 29, not 28.

  The binary float 0.29 is a hair below 0.29, and ``floor(0.29 * 100)`` would drop one example.
  """
  return math.floor(fractions.Fraction(repr(float(rate))) * num_examples)


def selection_rank(seed: int, index, num_examples: int, fraction: float) -> np.ndarray:
  """Rank of example i among the full split's m examples; those with rank ``< ⌊fraction·m⌋`` are trained on.

  The identity for ``fraction = 1`` (every example), else the keyed bijection ``π_F(i)`` with key
  ``hash32(seed, FRACTION)``. Restricted to the selected examples it is a bijection onto
  ``[0, ⌊fraction·m⌋)``, which is what lets label noise rank them in turn.
  """
  index = np.asarray(index, dtype=np.int64)
  if fraction >= 1.0:
    return index
  return keyed_permutation(hash32(seed, streams.FRACTION), index, num_examples)


def fraction_mask(seed: int, num_examples: int, fraction: float) -> np.ndarray:
  """Boolean mask over ``[0, m)`` selecting exactly ``⌊fraction·m⌋`` examples (Fig. 7A/B).

  Example i is kept iff ``π_F(i) < ⌊f·m⌋`` (``selection_rank``), which makes the subset exact in size, a pure
  function of (seed, i), and nested: a smaller fraction selects a subset of a larger one.
  """
  if not 0.0 < fraction <= 1.0:
    raise UserError(f"config.dataset_fraction must lie in (0, 1], got {fraction}.")
  keep = exact_count(fraction, num_examples)
  if keep < 1:
    raise UserError(f"config.dataset_fraction={fraction} keeps no example of {num_examples}.")
  return selection_rank(seed, np.arange(num_examples), num_examples, fraction) < keep


def noise_mask(seed: int, index, rate: float, *, num_examples: int, fraction: float = 1.0) -> np.ndarray:
  """Which examples get a wrong class label (Fig. 7C): exactly ``⌊rate·m'⌋`` of the trained-on examples.

  The trained-on examples number ``m' = ⌊fraction·m⌋``, ``m`` being the full split's size.

  A trained-on example's selection rank ``r ∈ [0, m')`` is ranked again by a keyed bijection ``π_N`` on
  ``[0, m')`` (key ``hash32(seed, NOISE_RANK)``); it is noisy iff ``π_N(r) < ⌊rate·m'⌋``. So the count is
  exact, a lower rate's set is a subset of a higher one's (same seed and fraction), and the answer is a pure
  function of the index: any host, batch or read order computes the same mask. Examples outside the
  fraction are never noisy (they are never trained on).
  """
  if not 0.0 <= rate < 1.0:
    raise UserError(f"config.label_noise must lie in [0, 1), got {rate}.")
  index = np.asarray(index)
  selected = exact_count(fraction, num_examples)
  flipped = exact_count(rate, selected)
  out = np.zeros(index.shape, bool)
  if flipped == 0:
    return out
  rank = selection_rank(seed, index, num_examples, fraction)
  inside = rank < selected
  out[inside] = keyed_permutation(hash32(seed, streams.NOISE_RANK), rank[inside], selected) < flipped
  return out


def noisy_labels(
  seed: int, index, labels, num_classes: int, rate: float, *, num_examples: int, fraction: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
  """Symmetric label noise (Fig. 7C) as a pure function of (seed, index) given the split's size.

  The examples of ``noise_mask`` (exactly ``⌊rate·m'⌋`` of the ``m'`` trained-on ones) get their label
  replaced by ``(y + 1 + hash32(seed, NOISE_CLASS, i) mod (C-1)) mod C``: one of the *other* ``C - 1``
  classes, uniformly. Returns ``(new_labels, is_noisy)``.
  """
  index = np.asarray(index)
  labels = np.asarray(labels)
  is_noisy = noise_mask(seed, index, rate, num_examples=num_examples, fraction=fraction)
  shift = 1 + hash32(seed, streams.NOISE_CLASS, index) % np.uint32(max(num_classes - 1, 1))
  corrupted = (labels.astype(np.int64) + shift.astype(np.int64)) % num_classes
  return np.where(is_noisy, corrupted, labels).astype(labels.dtype), is_noisy


def subset_mask(seed: int, model: int, num_examples: int, rate: float) -> np.ndarray:
  """Which of ``num_examples`` examples model ``model`` of a Feldman-Zhang ensemble trains on.

  Exactly ``⌊rate·M⌋`` of them, ranked by the keyed bijection with key ``hash32(seed, SUBSET, model)``.
  """
  keep = exact_count(rate, num_examples)
  if not 0 < keep < num_examples:
    raise UserError(f"a subset rate of {rate} keeps {keep} of {num_examples} examples; use a rate in (0, 1).")
  rank = keyed_permutation(hash32(seed, streams.SUBSET, model), np.arange(num_examples), num_examples)
  return rank < keep
