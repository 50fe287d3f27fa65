"""The scikit-learn 8x8 handwritten digits as an offline tfds dataset.

The data ships inside scikit-learn, so the dataset can be built without
network access and is identical on every machine.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

NUM_TRAIN = 1437
"""Examples in the train split; the remaining 360 of the 1797 form the test split."""

SPLIT_SEED = 0
"""Seed of the fixed permutation that assigns examples to splits."""


class Digits(tfds.core.GeneratorBasedBuilder):
  """`sklearn.datasets.load_digits` with a fixed 1437/360 train/test split.

  scikit-learn provides no split, so one is fixed here to make results
  comparable across runs: the 1797 examples are permuted with
  `np.random.default_rng(0).permutation(1797)`; the first 1437 permuted
  examples form `train` and the remaining 360 form `test`.

  Features:
    image: uint8 (8, 8, 1); the original 0..16 intensities rescaled to
      0..255 as `np.round(pixel * 255 / 16)` so standard image pipelines
      (which assume 0..255) apply unchanged.
    label: the digit, 0..9.
    index: position of the example within its split (0..len(split)-1) in
      the fixed order above. tfds reads examples back in an order of its
      own choosing, so this is what lets per-example state (e.g. per-example
      labels or weights) be keyed stably.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(8, 8, 1)),
          "label": tfds.features.ClassLabel(num_classes=10),
          "index": tfds.features.Tensor(shape=(), dtype=np.int64),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://scikit-learn.org/stable/modules/generated/sklearn.datasets.load_digits.html",
    )

  def _split_generators(self, dl_manager):
    """Splits the bundled data; `dl_manager` is unused as nothing is downloaded."""
    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    train, test = order[:NUM_TRAIN], order[NUM_TRAIN:]
    return {
      "train": self._generate_examples(images[train], digits.target[train]),
      "test": self._generate_examples(images[test], digits.target[test]),
    }

  def _generate_examples(self, images, labels):
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image, "label": label, "index": index}
