"""Offline heads on every saved checkpoint of a run (Fig. 2B):

  python -m rlp_jax.offline --workdir=DIR [--config.offline.num_epochs=100 ...] [--steps=0,220]
      [--output=offline.jsonl]

What is fitted and what is written: analysis/offline.py and training/offline_heads.py.
"""

from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

from rlp_jax.analysis import offline
from rlp_jax.infra import errors, multihost, rundir


def parse_cli(argv: list[str]):
  """``(workdir, config, output, steps)`` from the command line, with ``--config.*`` overrides applied to
  the run's saved config. Uses its own flag registry, so it can be called (and tested) in-process."""
  workdir = None
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      workdir = arg.split("=", 1)[1]
    elif arg == "--workdir" and i + 1 < len(argv):
      workdir = argv[i + 1]
  if not workdir:
    raise flags.Error("--workdir=DIR is required: the directory of a run trained by rlp_jax.main.")
  fv = flags.FlagValues()
  flags.DEFINE_string("workdir", None, "Directory of a trained run.", flag_values=fv)
  flags.DEFINE_bool("debug", False, "Show the Python traceback of a user error too.", flag_values=fv)
  flags.DEFINE_string(
    "output", offline.OFFLINE_FILE, "File name (in the workdir) of the offline curve.", flag_values=fv
  )
  flags.DEFINE_list("steps", None, "Only these checkpoint steps (step 0 is always included).", flag_values=fv)
  config_flags.DEFINE_config_dict("config", rundir.load_config(workdir), flag_values=fv, sys_argv=list(argv))
  rest = fv(argv)
  if len(rest) > 1:
    raise flags.Error(f"Unexpected arguments: {rest[1:]}")
  steps = None if fv.steps is None else [int(s) for s in fv.steps]
  return fv.workdir, fv.config, fv.output, steps


def main(argv=None) -> None:
  logging.set_verbosity(logging.WARNING)
  workdir, config, output, steps = parse_cli(list(sys.argv if argv is None else argv))
  multihost.initialize()  # on a pod: every host extracts its slice's features, all fit the same heads
  records = offline.run_offline(
    workdir, config, output=output, steps=steps, log=lambda s: print(s, flush=True)
  )
  print(f"{len(records)} checkpoints in {workdir}/{output}", flush=True)


if __name__ == "__main__":
  try:
    main()
  except (errors.UserError, flags.Error) as e:  # one line, like every command (infra/errors.py)
    if "--debug" in sys.argv:
      raise
    errors.exit_with(str(e))
