"""A small reproduction of the paper, end to end, from one reproduction config (configs/paper_<dataset>.py).

``reproduce`` runs, in one process (the start-up is paid once):

1. the config's studies (its ``get_studies``, infra/studies.py) under ROOT, one run after another — a
   finished run is not redone, an interrupted one resumes (analysis/sweep.py's rules);
2. offline heads (and converged probes where the config asks) on every snapshot of the base runs — λ = 0,
   nothing else changed, every seed (Fig. 2B; analysis/offline.py);
3. per-example scores of the label-noise runs at two snapshots (the first after initialization and the
   last): online and offline heads and the class loss, with their noisy-vs-clean AUCs (as
   ``memorization --steps=S1,S2 --offline --k=0``);
4. the figures and tables (analysis/paper_results.py) into OUT, with each stage's wall time.

What differs between datasets lives in the config file; nothing here names one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rlp_jax.analysis import memorization, offline, paper_results, run_logs, scores, sweep
from rlp_jax.infra import config_args, studies
from rlp_jax.infra.errors import UserError


def reproduce(
  config_arg: str, root: str, out: str, *, data_dir: str = "", command: str = "", log: Callable = print
) -> str:
  """Trains the config's studies, then offline heads, scores, figures and tables; returns tables.md's path.

  ``config_arg`` is ``path[:arg]`` of a config file that defines ``get_studies``.
  """
  path, _, arg = config_arg.partition(":")
  config = config_args.from_file(config_arg)
  if data_dir:
    config.data_dir = data_dir
  module = config_args.load_module(path)
  if not hasattr(module, "get_studies"):
    raise UserError(f"--config={path}: it defines no get_studies(arg); use configs/paper_<dataset>.py.")
  all_studies = module.get_studies(arg)
  grids = [(s, studies.grid(config, s)) for s in all_studies]
  wall = {}
  start = time.time()
  runs = sweep.make_runs(config, root, studies.points(config, all_studies))
  sweep.run_local(runs, log=log)
  sweep.write_summary(root, runs)
  wall[f"train {len(runs)} runs"] = time.time() - start
  done = [r for r in runs if sweep.status(r) == "done"]  # a diverged run has no analyses
  # Fig. 2B: the base runs (λ = 0, nothing else changed), one per seed.
  fig2 = [r for r in done if set(r.point) == {studies.LAMBDA, studies.SEED} and not r.point[studies.LAMBDA]]
  t = time.time()
  for run in fig2:
    offline.run_offline(run.workdir, run.config, log=log)
  wall[f"offline heads and probes (Fig. 2B, {len(fig2)} runs)"] = time.time() - t

  t = time.time()
  noisy = [r for r in done if r.config.label_noise]
  for run in noisy:
    log(f"scores: {run.name}")
    # Two checkpoints: the first snapshot after initialization (early: a network fits clean labels before
    # noisy ones) and the last; each costs two feature passes and an offline fit.
    logs = run_logs.RunLogs.load(run.workdir)
    epochs = {run.config.checkpoint.snapshot_every_epochs, run.config.num_epochs}
    steps = sorted(r["step"] for r in logs.metrics if r["epoch"] in epochs)
    data = scores.compute(run.workdir, steps, offline=True, config=run.config, log=lambda s: None)
    memorization.analyze(run.workdir, data, k=0)
  wall[f"per-example scores ({len(noisy)} noise runs)"] = time.time() - t
  wall["total"] = time.time() - start
  return paper_results.write(
    root,
    out,
    grids=grids,
    fig2=[r.name for r in fig2],
    command=command or f"python -m rlp_jax.reproduce --config={config_arg}",
    wall_s=wall,
  )
