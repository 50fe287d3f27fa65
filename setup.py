"""rlp_jax: Random Label Prediction heads for measuring and controlling memorization (JAX/Flax)."""

import pathlib

from setuptools import find_packages, setup

_REQUIREMENTS = [
  line.strip()
  for line in (pathlib.Path(__file__).parent / "requirements.txt").read_text().splitlines()
  if line.strip() and not line.startswith("#")
]

setup(
  name="rlp_jax",
  version="0.1.0",
  description="Random Label Prediction heads: measure and regularize memorization in deep networks.",
  packages=find_packages(include=["rlp_jax", "rlp_jax.*"]),
  python_requires=">=3.11",
  install_requires=_REQUIREMENTS,
)
