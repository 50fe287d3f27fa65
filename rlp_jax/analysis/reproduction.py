"""A small reproduction of the paper, end to end, from one reproduction config (configs/paper_<dataset>.py).

``reproduce`` runs, in one process (the start-up is paid once):

1. the config's sweep (its ``get_sweep``) under ROOT, one run after another — a finished run is not redone,
   an interrupted one resumes (analysis/sweep.py's rules);
2. offline heads on every snapshot of the λ = 0, seed 0 run of the base width (Fig. 2B; analysis/offline.py);
3. per-example scores of the label-noise runs at two snapshots (the first after initialization and the
   last): online and offline heads and the class loss, with their noisy-vs-clean AUCs (as
   ``memorization --steps=S1,S2 --offline --k=0``);
4. the figures and tables (analysis/paper_results.py) into OUT, with each stage's wall time.

What differs between datasets lives in the config file; nothing here names one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rlp_jax.analysis import memorization, offline, paper_results, scores, sweep
from rlp_jax.data import input_pipeline
from rlp_jax.infra import config_args


def reproduce(
  config_arg: str, root: str, out: str, *, data_dir: str = "", command: str = "", log: Callable = print
) -> str:
  """Everything above for ``config_arg`` (``path[:arg]``); returns the path of the written tables.md."""
  config = config_args.from_file(config_arg)
  if data_dir:
    config.data_dir = data_dir
  wall = {}
  start = time.time()
  runs = sweep.make_runs(config, root, sweep.points_from(sweep.sweep_from_config_file(config_arg), config))
  sweep.run_local(runs, log=log)
  sweep.write_summary(root, runs)
  wall[f"train {len(runs)} runs"] = time.time() - start
  by_name = {r.name: r for r in runs}
  kinds = paper_results.classify(root, config.model.width)

  t = time.time()
  for run in kinds.get("fig2", []):
    offline.run_offline(run.workdir, by_name[run.name].config, log=log)
  wall["offline heads (Fig. 2B)"] = time.time() - t

  t = time.time()
  for run in kinds.get("noise", []):
    log(f"scores: {run.name}")
    # Two checkpoints: the first snapshot after initialization (early: a network fits clean labels before
    # noisy ones) and the last; each costs two feature passes and an offline fit.
    cfg = by_name[run.name].config
    epochs = {cfg.checkpoint.snapshot_every_epochs, cfg.num_epochs}
    steps = sorted(r["step"] for r in run.metrics if r["epoch"] in epochs)
    data = scores.compute(run.workdir, steps, offline=True, config=cfg, log=lambda s: None)
    memorization.analyze(run.workdir, data, k=0)
  wall["per-example scores (noise runs)"] = time.time() - t
  wall["total"] = time.time() - start
  return paper_results.write(
    root,
    out,
    base_width=config.model.width,
    num_train=input_pipeline.get_info(config).num_train,
    command=command or f"python -m rlp_jax.reproduce --config={config_arg}",
    wall_s=wall,
  )
