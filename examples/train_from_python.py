"""A whole rlp_jax run from Python: a config file's get_config, changed in code, then train_and_evaluate.

  python examples/train_from_python.py --workdir=/tmp/rlp_py [--steps=10] [--epochs=1] [--data_dir=DIR]

It is what ``python -m rlp_jax.main --config=configs/digits.py:tiny --workdir=DIR --config.KEY=VALUE ...``
does, minus the flags: the config is an ml_collections ConfigDict, so any key can be set in code, and the
run directory is the command's (metrics.jsonl, TensorBoard events, checkpoints/, snapshots/,
summary.json). Re-running it with the same settings resumes that run (here: it has already finished, so it
evaluates again). Shrunk to a few steps so that it ends in seconds on a CPU; drop the shrinking for the
real demo (30 epochs, about a minute).

Prints the summary table and, last, a JSON line with the final metrics (what tests/test_examples.py reads).
"""

from __future__ import annotations

import argparse
import json
import pathlib

from rlp_jax.infra import config_args
from rlp_jax.training.loop import train_and_evaluate

# The config file by its path (from any working directory): configs/ is not a package to import.
DIGITS = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--steps", type=int, default=10, help="steps per epoch (0 = the whole train split)")
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--data_dir", default="", help="tfds data_dir ('' = tfds' default)")
  args = parser.parse_args()

  config = config_args.from_file(f"{DIGITS}:tiny")  # = get_config("tiny") of configs/digits.py
  config.data_dir = args.data_dir
  config.num_epochs = args.epochs
  config.max_steps_per_epoch = args.steps
  config.eval.train_examples = 256  # random-label accuracy on 256 training examples
  config.rlp.layers = "pre_logits"  # one head (the file's default: block_1 and pre_logits) ...
  config.rlp.reg_lambda = 0.1  # ... that also regularizes
  config.probes.layers = ""  # no class probes
  config.offline.at_init = False  # no offline head at initialization (the control of Fig. 2B)
  result = train_and_evaluate(config, args.workdir)

  print(result["table"])
  print(json.dumps({"metrics": result["metrics"], "rlp_heads": result["rlp_heads"]}, default=float))


if __name__ == "__main__":
  main()
