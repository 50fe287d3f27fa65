r"""A small reproduction of the paper's findings: trains a sweep, then its analyses, figures and tables.

The sweep is a reproduction config's; the analyses, figures and tables are analysis/reproduction.py's.

  python -m rlp_jax.reproduce --config=configs/paper_digits.py --workdir=ROOT [--out=DIR] [--quick]

ROOT holds one directory per run (rerunning skips finished runs and resumes interrupted ones); the figures
and tables.md go to OUT (default ROOT/results; docs/results.md's come from --out=docs/results).
``--quick`` runs the config's ``quick`` version: every run 2 epochs, a dry run of the whole pipeline.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app, flags

from rlp_jax.analysis import reproduction
from rlp_jax.infra import config_args, console, errors


def main(argv: Sequence[str]) -> None:
  fl = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  path, _, arg = fl.config.partition(":")
  if fl.quick:
    arg = ",".join(a for a in (arg, "quick") if a)
  config_arg = f"{path}:{arg}" if arg else path
  config_args.from_file(config_arg)  # a missing or broken config file is refused before any work
  console.setup()  # our lines on the console; the libraries' narration in each run's logs/
  out = fl.out or os.path.join(fl.workdir, "results")
  command = " ".join(["python -m rlp_jax.reproduce", *sys.argv[1:]])
  tables = reproduction.reproduce(
    config_arg, fl.workdir, out, data_dir=fl.data_dir, command=command, log=lambda s: print(s, flush=True)
  )
  with open(tables) as f:
    print(f.read())
  print(f"figures and tables in {out}")


def define_flags() -> None:
  flags.DEFINE_string("config", None, "A reproduction config file (configs/paper_<dataset>.py[:arg]).")
  flags.DEFINE_string("workdir", None, "Root directory of the runs (one directory per run).")
  flags.DEFINE_string("out", "", "Where the figures and tables.md go (default WORKDIR/results).")
  flags.DEFINE_bool("quick", False, "The config's quick version: 2 epochs per run, a dry run of everything.")
  flags.DEFINE_string("data_dir", "", "tfds data_dir (default: the config's).")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  define_flags()
  errors.run(main)
