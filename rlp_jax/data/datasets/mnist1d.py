"""MNIST-1D generated offline with the `mnist1d` package, as a tfds dataset.

MNIST-1D is procedurally generated, so instead of downloading the published
pickle we run the package's generator: the dataset can then be built without
network access, at any size, and is a pure function of its config.
"""

from __future__ import annotations

import dataclasses
import random
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from rlp_jax.infra.errors import UserError

SIGNAL_LENGTH = 40
"""Length of every generated signal (mnist1d's `final_seq_length`)."""

NUM_CLASSES = 10


@dataclasses.dataclass(eq=False)
class Mnist1dConfig(tfds.core.BuilderConfig):
  """Size and seed of a generated MNIST-1D.

  The config name must identify these fields uniquely: tfds caches prepared
  data under `<data_dir>/mnist1d/<name>/<version>` and will reuse it for any
  config with the same name.

  Attributes:
    num_train: examples in the `train` split.
    num_test: examples in the `test` split.
    seed: seed of mnist1d's generator; 42 is mnist1d's own default.
  """

  num_train: int = 4000
  num_test: int = 1000
  seed: int = 42

  def __post_init__(self):
    # mnist1d generates `num_samples // 10` examples per class, so any other
    # total would silently yield fewer examples than asked for.
    total = self.num_train + self.num_test
    if self.num_train <= 0 or self.num_test <= 0 or total % NUM_CLASSES:
      raise UserError(
        f"num_train and num_test must be positive and sum to a multiple of {NUM_CLASSES}, "
        f"got num_train={self.num_train}, num_test={self.num_test}."
      )


def _generate(config: Mnist1dConfig) -> tuple[np.ndarray, np.ndarray]:
  """Returns (signals float32 (N, 40, 1), labels (N,)) with N = num_train + num_test.

  All N examples are generated jointly by `mnist1d.data.make_dataset` with the
  package's default transform parameters, exactly as mnist1d does: classes are
  balanced over the pool, the pool is shuffled, and it is standardized with
  its own mean and std. Taking the first `num_train` as train is what mnist1d's
  `train_split` does, so config `4k` equals `make_dataset(get_dataset_args())`.

  `make_dataset` seeds the global `random` and `np.random` generators; their
  state is restored afterwards so building a dataset does not reseed the
  caller's randomness.
  """
  # Imported here because mnist1d imports matplotlib.pyplot, which importing
  # `rlp_jax.data.datasets` to register the builders should not pay for.
  from mnist1d.data import get_dataset_args, make_dataset

  args = get_dataset_args()
  args.num_samples = config.num_train + config.num_test
  args.train_split = 1.0  # Split below by count rather than by a float fraction.
  args.seed = config.seed
  np_state, py_state = np.random.get_state(), random.getstate()
  try:
    data = make_dataset(args)
  finally:
    np.random.set_state(np_state)
    random.setstate(py_state)
  return data["x"].astype(np.float32)[..., None], data["y"]


class Mnist1d(tfds.core.GeneratorBasedBuilder):
  """MNIST-1D (Greydanus 2020): 10-class 1-D signals of length 40.

  Predefined configs all use seed 42 and 1000 test examples: `4k` (default;
  4000 train, i.e. mnist1d's default 5000 examples with its 0.8 train
  fraction), `10k` and `100k`. Other sizes: pass e.g.
  `Mnist1dConfig(name="n50000", num_train=50000)` as `config=`. Train and test
  are drawn jointly (see `_generate`), so test sets of different configs are
  different samples of the same distribution, not the same examples.

  Generation runs mnist1d's per-example Python loop once per build: about 2 s
  for `4k` and 35 s for `100k`; tfds caches the result.

  Features:
    image: float32 (40, 1); the signal with a trailing channel axis so it
      fits 1-D convolutions directly.
    label: the digit class, 0..9.
    index: position of the example within its split (0..len(split)-1) in
      generation order. tfds reads examples back in an order of its own
      choosing, so this is what lets per-example state be keyed stably.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS: ClassVar[list[Mnist1dConfig]] = [
    Mnist1dConfig(name="4k", num_train=4000),
    Mnist1dConfig(name="10k", num_train=10000),
    Mnist1dConfig(name="100k", num_train=100000),
  ]
  DEFAULT_CONFIG_NAME = "4k"

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(SIGNAL_LENGTH, 1), dtype=np.float32),
          "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
          "index": tfds.features.Tensor(shape=(), dtype=np.int64),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://github.com/greydanus/mnist1d",
    )

  def _split_generators(self, dl_manager):
    """Generates the data; `dl_manager` is unused as nothing is downloaded."""
    signals, labels = _generate(self.builder_config)
    num_train = self.builder_config.num_train
    return {
      "train": self._generate_examples(signals[:num_train], labels[:num_train]),
      "test": self._generate_examples(signals[num_train:], labels[num_train:]),
    }

  def _generate_examples(self, signals, labels):
    for index, (signal, label) in enumerate(zip(signals, labels)):
      yield index, {"image": signal, "label": label, "index": index}
