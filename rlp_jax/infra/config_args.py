"""The ``:arg`` vocabulary shared by the paper's config files (``configs/*.py``).

Each experiment file lists the args it accepts; their meaning lives here, once:

  all_blocks  an RLP head on every listed layer (Fig. 2C), all of them regularizing when λ > 0
  reg_last    heads on every layer, only the last one regularizes (Fig. 8A)
  reg_all     heads on every layer, all regularize (Fig. 8B/C)
  reg_block8  heads on every layer, only the 8th regularizes (A.10)
  probes      a linear class probe on every layer (Fig. 9)
  shuffled    new random labels every epoch (A.2)
  unique      one label per training example, n = m (A.5)
  two_layer   heads with one hidden layer of 1024 and n = 10 (A.6)
  multihead   10 parallel heads, each with its own labels (A.8)
  runlocal    shrink to a CPU smoke test (see ``shrink_for_runlocal``)

``from_file("configs/digits.py:tiny")`` loads a config file from Python as ``--config=`` does on the
command line: by path, from any working directory (config files import only from ``rlp_jax``).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import types
from collections.abc import Sequence

from rlp_jax.infra.errors import UserError

LAYER_ARGS = ("all_blocks", "reg_last", "reg_all", "reg_block8")


def load_module(path: str) -> types.ModuleType:
  """The Python module of a config file, by path (relative to the working directory, or absolute)."""
  if not os.path.isfile(path):
    raise UserError(f"{path}: no such config file; give the path of a configs/*.py file.")
  # A source loader whatever the file's suffix, as ml_collections' config flags load it.
  loader = importlib.machinery.SourceFileLoader("_rlp_config", path)
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
  loader.exec_module(module)
  return module


def from_file(config_arg: str):
  """``get_config(arg)`` of a config file named ``path[:arg]`` (``get_config()`` without an arg).

  This is how ml_collections' ``--config=path[:arg]`` flag calls it.
  """
  path, _, arg = config_arg.partition(":")
  get_config = load_module(path).get_config
  return get_config(arg) if arg else get_config()


def flag_in_argv(argv: Sequence[str], name: str) -> str | None:
  """The value of ``--name=V`` or ``--name V`` as written on a command line, before absl parses it.

  For a command whose flags depend on it: offline's --config is the saved config of its --workdir.
  """
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      return a.split("=", 1)[1]
    if a == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def lookup(config, key: str, what: str):
  """The value at the dotted ``key`` ('rlp.reg_lambda'); a missing key is a UserError naming ``what``."""
  node = config
  for part in key.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError):
      raise UserError(f"{what} key {key!r}: config has no key {key!r}.") from None
  return node


def parse(arg: str, valid: Sequence[str], path: str) -> set[str]:
  """Comma-separated args; an unknown one fails naming the config file and the valid ones."""
  args = {a.strip() for a in arg.split(",") if a.strip()}
  unknown = sorted(args - set(valid))
  if unknown:
    raise UserError(f"{path}: unknown arg(s) {unknown}; valid args: {', '.join(valid)}.")
  return args


def apply_figure_args(config, args: set[str], layers: Sequence[str], spec: str) -> None:
  """Sets the heads, probes and label mode that the figure args ask for, over ``layers`` (in order).

  ``spec`` is the layer token (configuration.LAYER_TOKENS) that means ``layers`` whatever the model's depth
  (``'blocks'`` for the ViT's blocks, ``'all'`` for every sown layer): written instead of the names, it
  keeps ``--config.model.depth`` / ``variant`` overrides valid. Only ``reg_last`` and ``reg_block8`` name
  one layer of the default depth.
  """
  if args & set(LAYER_ARGS):
    config.rlp.layers = spec
    config.rlp.reg_layers = "all"
  if "reg_last" in args:
    config.rlp.reg_layers = layers[-1]
  if "reg_block8" in args:
    config.rlp.reg_layers = layers[min(8, len(layers)) - 1]
  if "probes" in args:
    config.probes.layers = spec
  if "shuffled" in args:
    config.rlp.label_mode = "shuffled"
  if "unique" in args:
    config.rlp.label_mode = "unique"
  if "two_layer" in args:
    config.rlp.num_labels, config.rlp.hidden_dim = 10, 1024
  if "multihead" in args:
    config.rlp.num_heads = 10


def shrink_for_runlocal(config) -> None:
  """``runlocal``: 2 epochs of 2 steps at batch 8 and n <= 100 (shrink the model separately, first)."""
  config.num_epochs = 2
  config.max_steps_per_epoch = 2
  config.batch_size = 8
  config.shuffle_buffer = 256
  config.eval.batch_size = 8
  config.eval.train_examples = 16
  config.eval.every_epochs = 1
  config.rlp.num_labels = min(config.rlp.num_labels, 100)
  config.rlp.hidden_dim = min(config.rlp.hidden_dim, 16)
  config.offline.update(num_epochs=1, batch_size=8, train_examples=16)
  config.log_every_steps = 1
  config.checkpoint.every_epochs = 1
