r"""Figures like the paper's and a Markdown page:

  python -m rlp_jax.report --workdir=DIR [--workdir=DIR ...] [--out=OUTDIR] [--noper_run]

A DIR is a run or a sweep root. Default OUTDIR: DIR/report for one, PARENT/report for several in one parent
directory; runs in different trees need --out. What it draws: analysis/figures.py; from which files:
analysis/run_logs.py; the page and where it goes: analysis/report.py.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence

from absl import flags

from rlp_jax.analysis.report import default_out, make_report
from rlp_jax.infra import console, errors


def define_flags() -> None:
  flags.DEFINE_multi_string(
    "workdir", None, "A run's directory or a sweep root; repeat the flag for several runs or sweeps."
  )
  flags.DEFINE_string(
    "out",
    "",
    "Output directory (default: WORKDIR/report for one --workdir; PARENT/report for several that share "
    "one parent directory; required for runs in different trees).",
  )
  flags.DEFINE_bool("per_run", True, "With several runs, also each run's own figures.")


def main(argv: Sequence[str]) -> None:
  console.setup()
  fl = flags.FLAGS
  if len(argv) > 1:  # the command once took positional paths: say how to write them now
    raise errors.UserError(
      f"--workdir: paths are given as flags, not positional arguments: --workdir={argv[1]} "
      "(repeat --workdir for several runs)."
    )
  if not fl.workdir:
    raise errors.UserError("--workdir: required: a run's directory or a sweep root (repeatable).")
  out = fl.out or default_out(fl.workdir)
  # A damaged log line is skipped, not taken as the end of the log (rundir.read_jsonl); say so in one
  # line each, in the commands' style, rather than as Python warnings with source lines.
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    drawn = make_report(fl.workdir, out, per_run=fl.per_run)
  for message in dict.fromkeys(str(w.message) for w in caught):
    print(f"warning: {message}", file=sys.stderr, flush=True)
  print(f"{len(drawn)} figures and report.md in {out}")


if __name__ == "__main__":
  define_flags()
  errors.run(main)
