"""The paper's configs: every one builds and trains on CPU with ``runlocal``; their args express the figures.

CIFAR-100 runs under ``tfds.testing.mock_data`` (tfds' own mocked reader with the dataset's metadata);
ImageNet runs on genuine tfds files of fake JPEGs (the mocked reader cannot produce decodable JPEG bytes).
"""

from __future__ import annotations

import importlib

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from rlp_jax.data import input_pipeline, tfds_source
from rlp_jax.heads import routing
from rlp_jax.infra import configuration
from rlp_jax.training import experiment as experiment_lib
from rlp_jax.training import loop, steps
from tests.test_tfds_pipeline import write_fake_tfds

CONFIGS = ("wrn_cifar100", "vit_cifar100", "vit_imagenet")


def get_config(name: str, arg: str = ""):
  return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  """{'cifar100': metadata dir for mock_data, 'imagenet2012': data_dir with fake files}."""
  meta = str(tmp_path_factory.mktemp("mock_meta"))
  write_fake_tfds(meta, "cifar100", {"train": [32], "test": [32]}, files=False)
  files = str(tmp_path_factory.mktemp("fake_imagenet"))
  write_fake_tfds(files, "imagenet2012", {"train": [12, 12], "validation": [8]})
  return {"cifar100": meta, "imagenet2012": files}


class _Data:
  """The data a config reads: tfds mock data for CIFAR-100, the fake ImageNet files otherwise."""

  def __init__(self, config, datasets):
    self.config, self.datasets, self.mock = config, datasets, None

  def __enter__(self):
    tfds_source.builder.cache_clear()
    if self.config.dataset == "cifar100":
      self.mock = tfds.testing.mock_data(
        num_examples=32, policy=tfds.testing.MockPolicy.USE_FILES, data_dir=self.datasets["cifar100"]
      )
      self.mock.__enter__()
    else:
      self.config.data_dir = self.datasets[self.config.dataset]
    return self.config

  def __exit__(self, *exc):
    if self.mock is not None:
      self.mock.__exit__(*exc)
    tfds_source.builder.cache_clear()


# One combination of figure args per config, so the heads on every block, the regularizing subset and the
# probes all compile and step (one step each: what matters is that it builds, compiles and is finite).
RUNS = {
  "wrn_cifar100": "runlocal,all_blocks,reg_last,probes",
  "vit_cifar100": "runlocal,reg_block8,probes,multihead",
  "vit_imagenet": "runlocal,reg_last,probes",
}


@pytest.mark.parametrize("name", CONFIGS)
def test_runlocal_builds_and_trains(name, datasets):
  config = get_config(name, RUNS[name])
  config.rlp.reg_lambda = 1.0
  with _Data(config, datasets) as config:
    experiment, state = experiment_lib.build(config)
    assert experiment.rlp_layers and experiment.reg_layers and experiment.probe_layers
    step = steps.make_train_step(experiment)
    batch = next(input_pipeline.train_batches(config, experiment.info, epoch=0))
    assert batch["image"].shape == (8, *experiment.info.input_shape)
    state = step(state, experiment_lib.device_batch(experiment, batch))
    sums = jax.device_get(state.loss_sums)
  assert int(state.step) == 1
  assert all(np.isfinite(v) for v in sums.values()), sums
  assert sums["loss/reg"] > 0


def test_vit_imagenet_runlocal_end_to_end(datasets, tmp_path):
  """The full loop on ImageNet-shaped data: train, eval on 'validation', checkpoints, metrics."""
  config = get_config("vit_imagenet", "runlocal,all_blocks")
  with _Data(config, datasets) as config:
    result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  metrics = result["metrics"]
  assert metrics["epoch"] == 2
  assert 0.0 <= metrics["test/accuracy"] <= 1.0
  assert {f"rlp/block_0{i}/accuracy" for i in (1, 2)} <= set(metrics)
  assert np.isfinite(metrics["loss/total"])


def test_full_configs_hold_the_paper_recipes():
  wrn = get_config("wrn_cifar100")
  assert (wrn.dataset, wrn.model.name, wrn.model.depth, wrn.model.width) == ("cifar100", "wrn", 16, 4)
  assert (wrn.optimizer.name, wrn.optimizer.learning_rate, wrn.optimizer.momentum) == ("sgd", 0.5, 0.9)
  assert (wrn.optimizer.warmup_epochs, wrn.optimizer.schedule, wrn.batch_size, wrn.num_epochs) == (
    1.0,
    "cosine",
    256,
    200,
  )
  assert (wrn.augment.flip, wrn.augment.crop, wrn.model.dropout, wrn.optimizer.weight_decay) == (
    False,
    "none",
    0.0,
    0.0,
  )
  assert wrn.label_smoothing == 0.0 and wrn.rlp.num_labels == 10_000 and wrn.rlp.reg_lambda == 0.0

  vit = get_config("vit_imagenet")
  assert (vit.dataset, vit.model.name, vit.model.variant, vit.model.patch_size) == (
    "imagenet2012",
    "vit",
    "B",
    32,
  )
  opt = vit.optimizer
  assert (opt.name, opt.learning_rate, opt.warmup_epochs, opt.weight_decay, opt.grad_clip_norm) == (
    "adamw",
    1e-3,
    8.0,
    0.1,
    1.0,
  )
  assert (vit.batch_size, vit.num_epochs, vit.augment.flip, vit.rlp.num_labels) == (1024, 90, True, 100_000)
  assert vit.eval.test_split == "validation" and vit.augment.image_size == 224
  # The paper's heads: one dense layer on pre_logits, LayerNorm + dense on every block (Fig. 2C).
  # ('blocks' resolves to every sown block, whatever the depth: tests/test_paper_heads.py)
  blocks = "blocks"
  assert (vit.rlp.norm_layers, vit.rlp.pool) == (blocks, "classifier")

  # λ is the paper's (Eq. 4 with its 1/n): the ImageNet peak λ = 1e4 weighs the per-example penalty by
  # 1e4 / 100,000 = 0.1, CIFAR-100's λ = 100 by 0.01; digits collapses at a per-example 1000.
  for config in (wrn, vit, get_config("vit_cifar100")):
    assert config.rlp.reg_normalization == "paper"
  assert routing.reg_scale(vit.rlp.reg_normalization, vit.rlp.num_labels) * 1e4 == pytest.approx(0.1)

  small = get_config("vit_cifar100")
  assert (small.model.variant, small.model.patch_size, small.dataset, small.rlp.norm_layers) == (
    "S",
    4,
    "cifar100",
    blocks,
  )


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_holds_the_command(name):
  doc = importlib.import_module(f"configs.{name}").__doc__
  assert f"python -m rlp_jax.main --config=configs/{name}.py --workdir=" in doc


def test_args_select_layers_and_modes():
  # A token, not the names: resolved against the model built, so a depth override keeps every block.
  blocks = "blocks"
  names = [f"block_{i:02d}" for i in range(1, 13)]
  assert configuration.parse_layers(blocks, [*names, "pre_logits"], "rlp.layers") == names
  vit = lambda arg: get_config("vit_imagenet", arg)
  assert vit("all_blocks").rlp.layers == blocks and vit("all_blocks").rlp.reg_layers == "all"
  assert vit("reg_last").rlp.reg_layers == "block_12" and vit("reg_last").rlp.layers == blocks
  assert vit("reg_block8").rlp.reg_layers == "block_08"
  assert vit("probes").probes.layers == blocks
  assert vit("shuffled").rlp.label_mode == "shuffled" and vit("unique").rlp.label_mode == "unique"
  # ImageNet's unique-label head computes its logits in chunks (to fit 80 GB); the CPU smoke test does not.
  assert (vit("unique").rlp.label_chunk, vit("unique,runlocal").rlp.label_chunk, vit("").rlp.label_chunk) == (
    32_768,
    0,
    0,
  )
  assert (vit("two_layer").rlp.hidden_dim, vit("two_layer").rlp.num_labels) == (1024, 10)
  assert vit("multihead").rlp.num_heads == 10
  assert vit("flip_only").augment.crop == "none" and vit("flip_only").augment.flip
  tiny = vit("runlocal,reg_block8")  # block numbers beyond the tiny depth map to its last block
  assert (tiny.model.depth, tiny.rlp.layers, tiny.rlp.reg_layers) == (2, "blocks", "block_02")
  assert get_config("vit_cifar100", "no_flip").augment.flip is False
  wrn = get_config("wrn_cifar100", "all_blocks,reg_last,flip")
  wrn_layers = "all"  # every layer a WRN sows, at any depth
  assert (wrn.rlp.layers, wrn.rlp.reg_layers, wrn.augment.flip) == (wrn_layers, "pre_logits", True)


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_arg_is_rejected(name):
  with pytest.raises(ValueError, match="unknown arg"):
    get_config(name, "runlocal,all_blokcs")
