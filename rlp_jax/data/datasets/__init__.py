"""Offline tfds datasets; importing this package registers their builders with tfds."""

from rlp_jax.data.datasets import digits, mnist1d  # noqa: F401  (imported for registration)
