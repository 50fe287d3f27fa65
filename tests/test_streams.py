"""infra/streams.py: every random stream has its own value, and the package draws from no other."""

from __future__ import annotations

import pathlib
import re

import jax
import numpy as np

from rlp_jax.infra import streams

ROOT = pathlib.Path(__file__).resolve().parents[1] / "rlp_jax"


def test_no_two_streams_of_a_kind_share_a_value():
  for kind in (streams.KEY_STREAMS, streams.HASH_STREAMS):
    values = list(kind.values())
    assert len(set(values)) == len(values), kind
  assert all(0 <= v < 2**32 for v in streams.HASH_STREAMS.values())


def test_the_tables_list_every_stream_constant():
  constants = {k: v for k, v in vars(streams).items() if k.isupper() and isinstance(v, int)}
  assert constants == {**streams.KEY_STREAMS, **streams.HASH_STREAMS}


def test_key_streams_give_independent_keys():
  keys = [jax.random.key_data(streams.key(0, s)) for s in streams.KEY_STREAMS.values()]
  assert len({np.asarray(k).tobytes() for k in keys}) == len(keys)


def test_no_module_defines_a_stream_of_its_own():
  """A fold_in of the run's seed or a hash purpose tag outside infra/streams.py is a second home."""
  pattern = re.compile(r"fold_in\(jax\.random\.key\(|_STREAM\b|^_[A-Z_]+ = 0x", re.MULTILINE)
  found = [
    str(p.relative_to(ROOT))
    for p in ROOT.rglob("*.py")
    if p.name != "streams.py" and pattern.search(p.read_text())
  ]
  assert found == ["analysis/ground_truth.py"], found  # its models' own seeds: one key per model index
