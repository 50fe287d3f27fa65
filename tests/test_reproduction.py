"""analysis/reproduction.py: the mnist1d reproduction's ``quick`` smoke run, every stage end to end.

Each study trains (one seed, two values, 2 epochs of 4 steps), the base run gets offline heads and probes on
every snapshot, the label-noise runs get per-example scores, and every study has its figure and table.
"""

from __future__ import annotations

import os

from rlp_jax.analysis import reproduction
from rlp_jax.infra import config_args


def test_the_quick_reproduction_runs_every_stage(tmp_path, data_dir):
  root, out = str(tmp_path / "runs"), str(tmp_path / "results")
  path = reproduction.reproduce(
    "configs/paper_mnist1d.py:quick", root, out, data_dir=data_dir, command="CMD", log=lambda s: None
  )
  md = open(path).read()
  studies = config_args.load_module("configs/paper_mnist1d.py").get_studies("quick")
  for study in studies:
    assert f"## {study.title}" in md, study.name
    assert os.path.getsize(os.path.join(out, f"{study.name}.png")) > 5000, study.name
  # Fig. 2B on the base run: online head, offline heads and the converged probe per snapshot.
  assert "## Fig. 2A/2B" in md and os.path.getsize(os.path.join(out, "fig2.png")) > 5000
  assert "## Noisy vs clean" in md and "class_loss" in md
