r"""Regenerates docs/results.md's figures and tables: the paper's findings, small, on digits.

  PYTHONPATH=. python tools/reproduce_digits.py [--root=/tmp/rlp_paper_digits] [--out=docs/results] [--quick]

1. trains the sweep of configs/paper_digits.py under ROOT, one run after another (a finished run is not
   redone, an interrupted one resumes: rlp_jax.sweep's rules);
2. offline heads on every snapshot of the λ = 0, seed 0 run (Fig. 2B; rlp_jax.offline);
3. per-example scores of the label-noise runs at two snapshots (the first after initialization and the
   last), online and offline heads and the class loss, with their noisy-vs-clean AUCs
   (as rlp_jax.memorization --steps=S1,S2 --offline --k=0);
4. the figures and tables (rlp_jax/analysis/paper_results.py) into OUT, with each stage's wall time.

``--quick`` runs 2 epochs per run (a dry run of the pipeline). One process: the start-up is paid once.
"""

from __future__ import annotations

import os
import time

from absl import flags

from rlp_jax.analysis import memorization, offline, paper_results, scores, sweep
from rlp_jax.infra import config_args, console, errors

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "configs", "paper_digits.py")

flags.DEFINE_string("root", "/tmp/rlp_paper_digits", "Where the runs go (one directory per run).")
flags.DEFINE_string("out", "docs/results", "Where the figures and tables.md go.")
flags.DEFINE_bool("quick", False, "2 epochs per run: a dry run of the whole pipeline.")
flags.DEFINE_string("data_dir", "", "tfds data_dir (default: the config's).")


def main(argv) -> None:
  del argv
  fl = flags.FLAGS
  console.setup()  # our lines on the console; the libraries' narration in each run's logs/
  arg = f"{CONFIG}:quick" if fl.quick else CONFIG
  config = config_args.from_file(arg)
  if fl.data_dir:
    config.data_dir = fl.data_dir
  wall = {}
  start = time.time()
  runs = sweep.make_runs(config, fl.root, sweep.points_from(sweep.sweep_from_config_file(arg), config))
  sweep.run_local(runs, log=lambda s: print(s, flush=True))
  sweep.write_summary(fl.root, runs)
  wall[f"train {len(runs)} runs"] = time.time() - start
  by_name = {r.name: r for r in runs}
  kinds = paper_results.classify(fl.root)

  t = time.time()
  for run in kinds.get("fig2", []):
    offline.run_offline(run.workdir, by_name[run.name].config, log=lambda s: print(s, flush=True))
  wall["offline heads (Fig. 2B)"] = time.time() - t

  t = time.time()
  for run in kinds.get("noise", []):
    print(f"scores: {run.name}", flush=True)
    # Two checkpoints: the first snapshot after initialization (early: a network fits clean labels before
    # noisy ones) and the last; each costs two feature passes and an offline fit.
    cfg = by_name[run.name].config
    epochs = {cfg.checkpoint.snapshot_every_epochs, cfg.num_epochs}
    steps = sorted(r["step"] for r in run.metrics if r["epoch"] in epochs)
    data = scores.compute(run.workdir, steps, offline=True, config=cfg, log=lambda s: None)
    memorization.analyze(run.workdir, data, k=0)
  wall["per-example scores (noise runs)"] = time.time() - t
  wall["total"] = time.time() - start
  path = paper_results.write(fl.root, fl.out, wall)
  print(open(path).read())
  print(f"figures and tables in {fl.out}; total {wall['total']:.0f} s")


if __name__ == "__main__":
  errors.run(main)
