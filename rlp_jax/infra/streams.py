"""Every random stream of a run, in one place: which seed each kind of randomness is drawn from.

Two kinds. *Key streams* are JAX PRNG keys ``key(seed, STREAM)`` = ``fold_in(key(config.seed), STREAM)``:
the model's initialization never depends on whether RLP heads or probes exist (their parameters come
from streams of their own), which is what makes λ = 0 bit-identical to a run without heads (docs/design.md
§1). *Hash streams* are the ``purpose`` tags of data/labels.hash32 (docs/design.md §2): each use of the
example-index hash gets its own, so e.g. which examples get a noisy label is independent of their random
labels. tests/test_streams.py checks that no two streams of a kind share a value.

The values are part of every saved run's meaning (its labels and initial weights): never renumber one.
"""

from __future__ import annotations

import jax

# Key streams, folded into config.seed.
MODEL = 0  # the backbone's initial parameters
RLP_HEADS = 1  # the RLP heads' initial parameters (online and offline heads start identical)
PROBES = 2  # the class probes' initial parameters
DROPOUT = 3  # the backbone's dropout masks, folded again with the step

# Hash streams: arbitrary odd-looking 32-bit tags.
RANDOM_LABEL = 0x2545F491  # the random label of head k for example i
NOISE_RANK = 0x6C8E9CF5  # which examples get a noisy class label
NOISE_CLASS = 0x1B873593  # the noisy label they get
FRACTION = 0x5BD1E995  # which examples a dataset fraction keeps
BIJECTION = 0x68E31DA4  # the keyed bijection that ranks examples for exact subsets
SUBSET = 0x3C6EF373  # the training subsets of the Feldman-Zhang models (analysis/ground_truth.py)
FILE_SHUFFLE = 0x1F83D9AB  # the order in which tfds reads a split's files, per epoch
AUGMENT = 0x3C6EF372  # the per-epoch seed of the data augmentation

KEY_STREAMS = {"MODEL": MODEL, "RLP_HEADS": RLP_HEADS, "PROBES": PROBES, "DROPOUT": DROPOUT}
HASH_STREAMS = {
  "RANDOM_LABEL": RANDOM_LABEL,
  "NOISE_RANK": NOISE_RANK,
  "NOISE_CLASS": NOISE_CLASS,
  "FRACTION": FRACTION,
  "BIJECTION": BIJECTION,
  "SUBSET": SUBSET,
  "FILE_SHUFFLE": FILE_SHUFFLE,
  "AUGMENT": AUGMENT,
}


def key(seed: int, stream: int) -> jax.Array:
  """The JAX key of a key stream: ``fold_in(key(seed), stream)``."""
  return jax.random.fold_in(jax.random.key(seed), stream)
