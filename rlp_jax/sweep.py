r"""Sweeps: a grid of runs of one experiment, run here one after another or emitted as launch commands.

  python -m rlp_jax.sweep --config=configs/digits.py --workdir=ROOT \
      --sweep='rlp.reg_lambda=0,1e-2,1,1e2;model.width=8,16' [--config.KEY=VALUE ...] \
      [--emit=local|tpu|slurm] [--launcher_args='--name rlp-v4 --zone us-central2-b'] [--summarize]

The spec, the run names and the summary: analysis/sweep.py.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import app, flags
from ml_collections import config_flags

from rlp_jax.analysis import sweep
from rlp_jax.infra import config_args, console, errors


def _config_overrides(argv: Sequence[str]) -> list[str]:
  """The ``--config.KEY=VALUE`` arguments of the sweep command, passed on to every emitted run."""
  out, i = [], 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config.") and "=" in a:
      out.append(a)
    elif a.startswith("--config.") and i + 1 < len(argv):
      out.append(f"{a}={argv[i + 1]}")
      i += 1
    i += 1
  return out


def main(argv: Sequence[str]) -> None:
  flags_ = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()
  config = flags_.config
  config_arg = config_args.flag_in_argv(sys.argv, "config") or ""  # path[:arg] as given, for emitted lines
  spec = flags_.sweep or sweep.sweep_from_config_file(config_arg)
  if spec is None:
    raise app.UsageError(
      "No sweep: pass --sweep='KEY=V1,V2;KEY2=...' or define get_sweep(arg) in the config file."
    )
  runs = sweep.make_runs(config, flags_.workdir, sweep.points_from(spec, config))
  if flags_.emit:
    for line in sweep.command_lines(
      runs, flags_.emit, config_arg, _config_overrides(sys.argv), flags_.launcher_args
    ):
      print(line)
    return
  if not flags_.summarize:
    sweep.run_local(runs, log=lambda s: print(s, flush=True))
  rows = sweep.write_summary(flags_.workdir, runs)
  print(f"{len(rows)} runs: {os.path.join(flags_.workdir, 'summary.md')}")
  with open(os.path.join(flags_.workdir, "summary.md")) as f:
    print(f.read())


def define_flags() -> None:
  config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
  )
  flags.DEFINE_string("workdir", None, "Root directory: each run goes to ROOT/<key>=<value>,...")
  flags.DEFINE_string("sweep", "", "KEY=V1,V2,...;KEY2=... (grid). Default: get_sweep() of the config file.")
  flags.DEFINE_enum("emit", "", ["", "local", "tpu", "slurm"], "Print launch commands instead of running.")
  flags.DEFINE_string("launcher_args", "", "Options for every launch/ line (e.g. '--name x --zone y').")
  flags.DEFINE_bool("summarize", False, "Only (re)write ROOT/summary.{csv,md} from the runs' logs.")
  flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
  define_flags()
  errors.run(main)
