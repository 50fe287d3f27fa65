"""Builds the embedded tfds datasets into temporary dirs and checks what the input pipeline relies on.

The pipeline keys every per-example random quantity by the ``index`` feature, so besides shapes and
sizes these tests pin that ``index`` is exactly 0..n-1 per split and that builds are reproducible.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

import rlp_jax.data.datasets  # noqa: F401  (registers the builders)
from rlp_jax.data.datasets.mnist1d import Mnist1dConfig

SMALL_MNIST1D = {"name": "n600", "num_train": 600, "num_test": 200, "seed": 7}


def _build(data_dir, name: str, config=None) -> tfds.core.DatasetBuilder:
  builder = tfds.builder(name, data_dir=str(data_dir), config=config)
  builder.download_and_prepare()
  return builder


def _read(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
  """The whole split as arrays, ordered by ``index`` (tfds' read order is its own)."""
  data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
  order = np.argsort(data["index"])
  return {key: value[order] for key, value in data.items()}


def _check_split(data: dict[str, np.ndarray], size: int, image_shape: tuple, image_dtype) -> None:
  np.testing.assert_array_equal(data["index"], np.arange(size))  # sorted, so: a permutation of 0..n-1
  assert data["index"].dtype == np.int64
  assert data["image"].shape == (size, *image_shape)
  assert data["image"].dtype == image_dtype
  assert set(np.unique(data["label"])) == set(range(10))


@pytest.fixture(scope="module")
def digits_builds(tmp_path_factory):
  return [_build(tmp_path_factory.mktemp(f"digits{i}"), "digits") for i in range(2)]


@pytest.fixture(scope="module")
def mnist1d_builds(tmp_path_factory):
  return [
    _build(tmp_path_factory.mktemp(f"mnist1d{i}"), "mnist1d", Mnist1dConfig(**SMALL_MNIST1D))
    for i in range(2)
  ]


@pytest.mark.parametrize("split, size", [("train", 1437), ("test", 360)])
def test_digits_split(digits_builds, split, size):
  builder = digits_builds[0]
  assert builder.info.splits[split].num_examples == size
  assert builder.info.supervised_keys == ("image", "label")
  _check_split(_read(builder, split), size, (8, 8, 1), np.uint8)


def test_digits_follows_documented_split_and_scaling(digits_builds):
  from sklearn.datasets import load_digits

  source = load_digits()
  order = np.random.default_rng(0).permutation(len(source.target))
  for split, rows in [("train", order[:1437]), ("test", order[1437:])]:
    data = _read(digits_builds[0], split)
    np.testing.assert_array_equal(data["label"], source.target[rows])
    np.testing.assert_array_equal(data["image"][..., 0], np.round(source.images[rows] * 255 / 16))


@pytest.mark.parametrize("split, size", [("train", 600), ("test", 200)])
def test_mnist1d_custom_config_split(mnist1d_builds, split, size):
  builder = mnist1d_builds[0]
  assert builder.builder_config.name == "n600"
  assert builder.info.splits[split].num_examples == size
  _check_split(_read(builder, split), size, (40, 1), np.float32)


@pytest.mark.parametrize("dataset", ["digits", "mnist1d"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_build_is_deterministic(digits_builds, mnist1d_builds, dataset, split):
  first, second = {"digits": digits_builds, "mnist1d": mnist1d_builds}[dataset]
  assert first.data_dir != second.data_dir
  a, b = _read(first, split), _read(second, split)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_mnist1d_default_config_is_mnist1d_default(tmp_path):
  """`4k` must be mnist1d's own default dataset so results compare with the published baselines."""
  from mnist1d.data import get_dataset_args, make_dataset

  builder = _build(tmp_path, "mnist1d")
  assert builder.builder_config.name == "4k"
  reference = make_dataset(get_dataset_args())
  for split, suffix in [("train", ""), ("test", "_test")]:
    data = _read(builder, split)
    np.testing.assert_array_equal(data["image"][..., 0], reference["x" + suffix].astype(np.float32))
    np.testing.assert_array_equal(data["label"], reference["y" + suffix])


def test_mnist1d_build_leaves_global_rng_alone(tmp_path):
  np.random.seed(123)
  expected = np.random.rand()
  np.random.seed(123)
  _build(tmp_path, "mnist1d", Mnist1dConfig(name="n20", num_train=10, num_test=10))
  assert np.random.rand() == expected


@pytest.mark.parametrize("num_train, num_test", [(595, 200), (0, 200), (600, 0)])
def test_mnist1d_config_rejects_sizes_mnist1d_cannot_generate(num_train, num_test):
  with pytest.raises(ValueError, match="multiple of 10"):
    Mnist1dConfig(name="bad", num_train=num_train, num_test=num_test)
