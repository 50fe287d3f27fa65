"""Shared fixtures: a session-wide tfds data_dir with the embedded datasets, and a tiny config."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

import configs.digits  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def tiny_config(data_dir):
  return make_tiny_config(data_dir)


def make_tiny_config(data_dir: str):
  """The digits demo shrunk to seconds: tiny MLP, 2 epochs, both heads and probes on."""
  config = configs.digits.get_config("tiny")
  config.data_dir = data_dir
  config.batch_size = 64
  config.eval.batch_size = 256
  config.offline.num_epochs = 2
  return config
