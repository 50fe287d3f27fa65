"""infra/compile_cache.py: where JAX's persistent compilation cache goes, and when it stays off."""

from __future__ import annotations

import os

import jax
import pytest

from rlp_jax.infra import compile_cache, configuration


@pytest.fixture
def restore_cache():
  saved, enabled = jax.config.jax_compilation_cache_dir, compile_cache._enabled
  yield
  jax.config.update("jax_compilation_cache_dir", saved)
  compile_cache._enabled = enabled


def test_a_writable_directory_is_used_and_a_home_path_expanded(tmp_path, monkeypatch, restore_cache):
  monkeypatch.setenv("HOME", str(tmp_path))
  used = compile_cache.enable("~/cache/xla")
  assert used == str(tmp_path / "cache" / "xla") and os.path.isdir(used)
  assert jax.config.jax_compilation_cache_dir == used
  assert compile_cache.enable("~/cache/xla") == used  # again: nothing changes


def test_off_when_empty_or_not_writable(tmp_path, restore_cache):
  before = jax.config.jax_compilation_cache_dir
  assert compile_cache.enable("") is None
  blocked = tmp_path / "a_file"
  blocked.write_text("not a directory")
  with pytest.warns(UserWarning, match="compiling without a cache"):
    assert compile_cache.enable(str(blocked / "xla")) is None
  assert jax.config.jax_compilation_cache_dir == before


def test_the_cache_is_not_part_of_a_runs_identity():
  # Moving the cache (another machine, another home) must not make a resume a different experiment.
  assert "compilation_cache_dir" in configuration.RESUMABLE_KEYS
  assert configuration.base_config().compilation_cache_dir  # on by default
