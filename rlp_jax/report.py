r"""Figures like the paper's and a Markdown page:

  python -m rlp_jax.report WORKDIR [WORKDIR ...] [--out=DIR]


What it draws: analysis/figures.py; from which files: analysis/run_logs.py; the page: analysis/report.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app, flags

from rlp_jax.analysis.report import make_report
from rlp_jax.infra import errors


def define_flags() -> None:
  flags.DEFINE_string("out", "", "Output directory (default: WORKDIR/report, or <common parent>/report).")
  flags.DEFINE_bool("per_run", True, "With several runs, also each run's own figures.")


def main(argv: Sequence[str]) -> None:
  paths = list(argv[1:])
  if not paths:
    raise app.UsageError("Usage: python -m rlp_jax.report WORKDIR [WORKDIR ...] [--out=DIR]")
  figures = make_report(paths, flags.FLAGS.out or None, per_run=flags.FLAGS.per_run)
  out = os.path.dirname(next(iter(figures))) if figures else flags.FLAGS.out
  print(f"{len(figures)} figures and report.md in {out}")


if __name__ == "__main__":
  define_flags()
  errors.run(main)
