"""Shared fixtures: a session-wide tfds data_dir with the embedded datasets, a tiny config, and the
environment of a process that sees the package but not the repository."""

from __future__ import annotations

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One XLA compilation cache for the whole test run, subprocesses included: the tiny runs of many tests
# compile the same steps, and loading a compiled program is far cheaper than compiling it on 2 cores.
# (Before jax is imported: JAX reads these when it starts.)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  import atexit
  import shutil
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="rlp_jax_xla_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

# XLA:CPU spends seconds optimizing the threefry bit-mixing of every parameter's initializer (a tiny MLP's
# jitted init: 6 s at the default level, 1 s at 0). What the tests assert does not depend on how well the
# CPU code is optimized, and their programs are tiny, so they compile without the backend's optimizations.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import configs.digits  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def package_only_env(tmp_path_factory) -> dict[str, str]:
  """os.environ for a subprocess (run it with a cwd outside the repo) that imports this checkout's rlp_jax
  but not the repository root: ``configs`` and ``tests`` are not importable, as for an installed package."""
  site = tmp_path_factory.mktemp("package_only")
  (site / "rlp_jax").symlink_to(pathlib.Path(__file__).resolve().parents[1] / "rlp_jax")
  return {**os.environ, "PYTHONPATH": str(site)}


@pytest.fixture
def tiny_config(data_dir):
  return make_tiny_config(data_dir)


def make_tiny_config(data_dir: str):
  """The digits demo shrunk to seconds: tiny MLP, 2 epochs, both heads and probes on."""
  config = configs.digits.get_config("tiny")
  config.data_dir = data_dir
  config.batch_size = 64
  config.eval.batch_size = 256
  # Evaluating random-label accuracy on 512 of the 1,437 training examples keeps every evaluation (each
  # epoch, each run) short; what is asserted about it does not depend on the subset's size.
  config.eval.train_examples = 512
  config.offline.num_epochs = 2
  return config


@pytest.fixture(scope="session")
def analysis_run(tmp_path_factory, data_dir):
  """The trained tiny run the analysis tests share (offline heads, memorization scores, report).

  Digits, the demo's CNN at width 32 for 6 epochs, two RLP heads (two label draws) with n = 200 on
  block_1 and pre_logits, checkpoints at steps 0, 66 and 132: the demo's regime, where the trained
  network's features carry example-specific information that its initial ones do not. Returns
  ``(config, workdir)``.
  """
  from rlp_jax.training import loop

  config = configs.digits.get_config("cnn,tiny")
  config.data_dir = data_dir
  config.eval.batch_size = 256
  config.num_epochs = 6
  config.model.width = 32
  config.rlp.num_heads = 2
  config.rlp.num_labels = 200
  config.rlp.optimizer.learning_rate = 1e-2
  config.checkpoint.every_epochs = 3
  config.checkpoint.snapshot_every_epochs = 3
  config.checkpoint.keep = 3
  config.checkpoint.snapshot_heads = True  # memorization scores read the online heads
  config.offline.at_init = False
  config.offline.num_epochs = 3
  config.offline.batch_size = 64
  workdir = str(tmp_path_factory.getbasetemp() / "analysis_tiny_run")
  loop.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.fixture
def synthetic_scores():
  """A memorization.npz-like dict of 60 examples, 3 classes, one layer; example 5 is unscored."""
  return _synthetic()


def _synthetic(m=60, num_classes=3, seed=0):
  rng = np.random.default_rng(seed)
  label = np.arange(m) % num_classes
  p_own = rng.uniform(size=(1, m, 1)).astype(np.float32)
  scored = np.ones(m, bool)
  scored[5] = False
  p_own[0, 5] = np.nan
  return {
    "index": np.arange(m),
    "scored": scored,
    "label": label,
    "is_noisy": np.zeros(m, bool),
    "layers": np.array(["pre_logits"]),
    "steps": np.array([10]),
    "num_labels": np.array(10),
    "p_own/pre_logits": p_own,
    "margin/pre_logits": p_own - 0.5,
    "correct/pre_logits": p_own > 0.5,
  }
