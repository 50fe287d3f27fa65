"""Offline heads on every saved checkpoint of a run (Fig. 2B):

  python -m rlp_jax.offline --workdir=DIR [--config.offline.num_epochs=100 ...] [--steps=0,220]
      [--output=offline.jsonl]

What is fitted and what is written: analysis/offline.py and training/offline_heads.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from rlp_jax.infra import config_args, configuration, console, errors, rundir

_HELP = ("--help", "-h", "--helpshort", "-?")


def define_flags(argv: Sequence[str], fv: flags.FlagValues = flags.FLAGS) -> None:
  """Defines ``--config`` as the run's saved config, with ``--config.KEY=VALUE`` applied to it.

  So it is defined from the ``--workdir`` on the command line (the defaults when there is none yet:
  ``--help`` works).
  """
  flags.DEFINE_string("workdir", None, "Directory of a run trained by rlp_jax.main.", flag_values=fv)
  flags.DEFINE_string(
    "output", rundir.OFFLINE_FILE, "File name (in the workdir) of the offline curve.", flag_values=fv
  )
  flags.DEFINE_list("steps", None, "Only these checkpoint steps (step 0 is always included).", flag_values=fv)
  flags.register_validator(
    "steps",
    lambda steps: steps is None or all(s.isdigit() for s in steps),
    message="--steps: must be checkpoint step numbers, e.g. --steps=0,220.",
    flag_values=fv,
  )
  # --help lists this command's flags, not one --config.KEY flag per key of the config.
  helping = any(a in _HELP for a in argv)
  config_flags.DEFINE_config_dict(
    "config",
    ml_collections.ConfigDict() if helping else _saved_config(argv),
    "The run's saved config; --config.KEY=VALUE changes offline.*, rlp.* or data_dir (every key: "
    "rlp_jax/infra/configuration.py).",
    flag_values=fv,
    sys_argv=list(argv),
  )
  flags.mark_flags_as_required(["workdir"], flag_values=fv)


def _saved_config(argv: Sequence[str]):
  workdir = config_args.flag_in_argv(argv, "workdir")
  try:
    return rundir.load_config(workdir) if workdir else configuration.base_config()
  except errors.UserError:  # reported by main(), inside the command's error handling
    return configuration.base_config()


def parse_cli(argv: Sequence[str]):
  """``(workdir, config, output, steps)`` from a command line, parsed in a registry of its own (tests)."""
  fv = flags.FlagValues()
  define_flags(argv, fv)
  fv(list(argv))
  return _arguments(fv)


def _arguments(fv: flags.FlagValues):
  rundir.load_config(fv.workdir)  # a workdir without a run ends here, in one line
  steps = None if fv.steps is None else [int(s) for s in fv.steps]
  return fv.workdir, fv.config, fv.output, steps


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from rlp_jax.analysis import offline  # here: --help answers without loading JAX
  from rlp_jax.infra import multihost

  console.setup()
  workdir, config, output, steps = _arguments(flags.FLAGS)
  multihost.initialize()  # on a pod: every host extracts its slice's features, all fit the same heads
  records = offline.run_offline(
    workdir, config, output=output, steps=steps, log=lambda s: print(s, flush=True)
  )
  print(f"{len(records)} checkpoints in {workdir}/{output}", flush=True)
  # The report's Fig. 2B and its table read offline.jsonl: they show these controls once it is redrawn.
  print(f"next: python -m rlp_jax.report --workdir={workdir} (Fig. 2B with these offline heads)", flush=True)


if __name__ == "__main__":
  errors.run(main, define_flags=define_flags)
