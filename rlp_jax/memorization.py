r"""Per-example memorization scores, capacity, noisy-vs-clean AUC, image grids:

  python -m rlp_jax.memorization --workdir=DIR [--steps=last|all|S1,S2]
      [--score=p_own|margin|correct|class_loss|...] [--layer=pre_logits] [--k=8] [--offline] [--probe]
      [--external=FILE [--external_score_key=tr_mem] [--external_label_key=tr_labels]]
      [--ground_truth=FILE]  (written by python -m rlp_jax.ground_truth with the run's config)

What each score is: analysis/scores.py; the summary built on them: analysis/memorization.py.
"""

from __future__ import annotations

import os

from absl import app, flags

from rlp_jax.analysis import external_scores, ground_truth_stats, image_grid, memorization, scores
from rlp_jax.infra import configuration, console, errors, rundir


def main(argv) -> None:
  fl = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.setup()
  config = rundir.load_config(fl.workdir)
  steps = fl.steps if fl.steps in ("last", "all") else [int(s) for s in fl.steps.split(",")]
  scored = fl.layers or configuration.named_layers(config.rlp.layers)
  if fl.layer and scored and fl.layer not in scored:
    raise errors.UserError(f"--layer={fl.layer}: not among the scored layers {scored}; pick one of them.")
  external = None  # read before the scoring, so that a bad file costs nothing
  if fl.external:
    external = external_scores.load_external(
      fl.external, fl.external_score_key, fl.external_label_key, fl.external_index_key
    )
  ground = ground_truth_stats.load(fl.ground_truth) if fl.ground_truth else None
  _print(fl, _score(fl, config, steps, external, ground))


def _score(fl, config, steps, external, ground) -> dict:
  data = scores.compute(
    fl.workdir,
    steps,
    fl.layers or None,
    offline=fl.offline,
    probe=fl.probe,
    lock=True,  # one scorer per run (a lock of its own: the run may still be training)
    log=lambda s: print(s, flush=True),
  )
  images = image_grid.load_train_images(config) if fl.k > 0 else None
  out = memorization.analyze(
    fl.workdir,
    data,
    kind=fl.score,
    layer=fl.layer or None,
    k=fl.k,
    images=images,
    external=external,
    ground=ground,
  )
  return out


def _print(fl, out) -> None:
  for name, cap in out["capacity"].items():
    print(
      f"capacity {name}: {cap['estimate']:.4f} [{cap['ci_low']:.4f}, {cap['ci_high']:.4f}] "
      f"({cap['level']:.0%} CI; random-label accuracy {cap['accuracy']:.4f}, chance {cap['chance']:.4f}, "
      f"{cap['num_heads']} label draws)"
    )
  for row in out.get("noisy_vs_clean", []):
    if row["step"] == out["step"]:
      print(f"noisy vs clean at step {row['step']}: {_auc_line(row)}")
  if "noisy_vs_clean_best" in out:
    best = out["noisy_vs_clean_best"]
    print(f"noisy vs clean, best score: {_auc_line(best)} at step {best['step']}")
  fit = out.get("fit_of_training_labels")
  if fit:
    noisy = (
      f" (noisy {fit['noisy_accuracy']:.4f}, clean {fit['clean_accuracy']:.4f})"
      if "noisy_accuracy" in fit
      else ""
    )
    print(f"training labels fitted at step {fit['step']}: {fit['train_accuracy']:.4f}{noisy}")
  if "ground_truth" in out:
    gt = out["ground_truth"]
    print(
      f"against Feldman-Zhang memorization ({gt['num_models']} models), step {gt['step']}: "
      "Spearman [95% CI], "
      f"overlap of the top {gt['top_k']} (chance {gt['top_chance']:.2f})"
    )
    for row in gt["rows"]:
      what = " ".join(x for x in (row["score"], row["layer"] or "", row["heads"]) if x)
      print(
        f"  {what}: {row['spearman']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}], top overlap "
        f"{row['top_overlap']:.3f}"
      )
  for key in ("noisy_vs_clean_auc", "external", "image_grid"):
    if key in out:
      print(f"{key}: {out[key]}")
  print(
    f"scores: {os.path.join(fl.workdir, scores.SCORE_FILE)}; "
    f"summary: {os.path.join(fl.workdir, memorization.SUMMARY_FILE)}"
  )


def _auc_line(row) -> str:
  what = " ".join(x for x in (row["score"], row["layer"] or "", row["heads"]) if x)
  return f"{what}: ROC AUC {row['auc']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}]"


def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Directory of a trained run.")
  flags.DEFINE_string("steps", "last", "Checkpoints to score: last, all, or S1,S2,...")
  flags.register_validator(
    "steps",
    lambda v: v in ("last", "all") or all(s.strip().isdigit() for s in v.split(",")),
    message="--steps: must be last, all, or checkpoint step numbers such as 0,220.",
  )
  flags.DEFINE_list("layers", None, "Layers to score (default: every layer with RLP heads).")
  flags.DEFINE_enum(
    "score",
    "p_own",
    list(scores.ALL_KINDS),
    "The per-example score for ranking, AUC and correlation (offline_* need --offline; class_* are the "
    "classifier's own loss / margin on the trained-on label).",
  )
  flags.DEFINE_bool(
    "offline", False, "Also score with offline heads fitted at each checkpoint (config.offline's budget)."
  )
  flags.DEFINE_bool("probe", False, "Also score with the converged probe fitted at each checkpoint.")
  flags.DEFINE_string(
    "ground_truth",
    "",
    "Feldman-Zhang memorization (.npz of python -m rlp_jax.ground_truth) to correlate with.",
  )
  flags.DEFINE_string("layer", "", "Layer of that score (default: the last scored layer).")
  flags.DEFINE_integer("k", 8, "Examples per class and side in the image grid (0 = no grid).", lower_bound=0)
  flags.DEFINE_string("external", "", "External per-example scores (.npz/.npy/.csv) keyed by index.")
  flags.DEFINE_string("external_score_key", "score", "Its score array/column.")
  flags.DEFINE_string("external_label_key", "label", "Its class-label array/column (checked against ours).")
  flags.DEFINE_string("external_index_key", "index", "Its index array/column (default: the array order).")
  flags.mark_flags_as_required(["workdir"])


if __name__ == "__main__":
  define_flags()
  errors.run(main)
