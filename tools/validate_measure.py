r"""The tables of docs/results.md's "Does the measure mean what it says?", from validate_measure.sh's runs.

  bash tools/validate_measure.sh ROOT            # the runs (97 minutes measured on 2 shared cores)
  python tools/validate_measure.py --root=ROOT --out=docs/results/validation.md

Every number is read from the runs' own outputs (summary.json, offline_std_*.jsonl, memorization.json,
the sweeps' summary.csv); values over seeds are mean [95% t-interval].
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os

from rlp_jax.analysis import paper_results
from rlp_jax.infra import rundir

SEEDS = (0, 1, 2)
LAYERS = ("block_1", "pre_logits")


def mean_ci(values) -> str:
  """paper_results' t-interval over seeds as this page prints it ('–' for no value)."""
  m, lo, hi = paper_results.mean_ci(values)
  if math.isnan(m):
    return "–"
  return f"{m:.3f}" if math.isnan(lo) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def table(header, rows) -> list[str]:
  return [
    "| " + " | ".join(header) + " |",
    "|" + "---|" * len(header),
    *("| " + " | ".join(str(c) for c in r) + " |" for r in rows),
  ]


def probe_tables(root: str) -> list[str]:
  """The demo over seeds: online head, plain control, converged probe at init and trained; then the
  standardized CE heads against budget on the initial and the final network."""
  runs = {s: json.load(open(f"{root}/demo_s{s}/summary.json")) for s in SEEDS}
  out = ["### The demo's table over seeds 0–2 (digits CNN, 30 epochs, n = 200, chance 0.005)", ""]
  rows = []
  for layer in LAYERS:
    get = lambda key, layer=layer: [  # noqa: E731
      next(r[key] for r in runs[s]["rlp_heads"] if r["layer"] == layer) for s in SEEDS
    ]
    rows.append(
      [
        f"`{layer}`",
        mean_ci(get("online_accuracy")),
        mean_ci(get("offline_at_init_accuracy")),
        mean_ci(get("probe_at_init_accuracy")),
        mean_ci(get("probe_trained_accuracy")),
      ]
    )
  test = [runs[s]["final_metrics"]["test/accuracy"] for s in SEEDS]
  out += table(["layer", "online head", "offline @ init (plain)", "probe @ init", "probe trained"], rows)
  out += ["", f"Class test accuracy {mean_ci(test)}. Per seed (online / probe @ init / probe trained):", ""]
  for s in SEEDS:
    cells = [
      f"`{r['layer']}` {r['online_accuracy']:.3f} / {r['probe_at_init_accuracy']:.3f} / "
      f"{r['probe_trained_accuracy']:.3f}"
      for r in runs[s]["rlp_heads"]
    ]
    out.append(f"- seed {s}: " + "; ".join(cells))
  out += ["", "### Standardized heads (z-scored features, CE, Adam 1e-2) against their budget", ""]
  rows = []
  for budget in (30, 100, 300):
    recs = {
      s: {r["step"]: r for r in rundir.read_jsonl(f"{root}/demo_s{s}/offline_std_{budget}.jsonl")}
      for s in SEEDS
    }
    for layer in LAYERS:
      init = [recs[s][0][f"offline/{layer}/accuracy"] for s in SEEDS]
      last = [recs[s][max(recs[s])][f"offline/{layer}/accuracy"] for s in SEEDS]
      rows.append([budget, f"`{layer}`", mean_ci(init), mean_ci(last)])
  out += table(["epochs of head training", "layer", "initial network", "trained network"], rows)
  return out


def _gt_rows(mem_json: dict, keys=("p_own", "margin", "offline_p_own", "probe_margin", "class_loss")):
  return [r for r in mem_json["ground_truth"]["rows"] if r["score"] in keys and r["heads"] in ("", "mean")]


def ground_truth_tables(root: str) -> list[str]:
  out = []
  for title, pattern in (
    ("clean labels, 30 epochs (FZ: 128 models)", "demo_s{s}/memorization.json"),
    ("20% label noise, epoch 40 (FZ: 64 models per seed)", "noisy_s{s}/memorization.json"),
    ("20% label noise, epoch 15 (same FZ files)", "noisy_s{s}/memorization_epoch15.json"),
  ):
    paths = {s: f"{root}/" + pattern.format(s=s) for s in SEEDS}
    if not all(os.path.exists(p) for p in paths.values()):
      continue
    mems = {s: json.load(open(p)) for s, p in paths.items()}
    fit = [mems[s].get("fit_of_training_labels", {}) for s in SEEDS]
    out += [f"### Spearman with Feldman–Zhang memorization: {title}", ""]
    if fit[0]:
      line = f"Training labels fitted: {mean_ci([f['train_accuracy'] for f in fit])}"
      if "noisy_accuracy" in fit[0]:
        line += (
          f" (noisy {mean_ci([f['noisy_accuracy'] for f in fit])}, "
          f"clean {mean_ci([f['clean_accuracy'] for f in fit])})"
        )
      out += [line + ".", ""]
    rows = []
    for i, r in enumerate(_gt_rows(mems[0])):
      per_seed = [_gt_rows(mems[s])[i] for s in SEEDS]
      rows.append(
        [
          r["score"],
          r["layer"] or "–",
          " / ".join(f"{p['spearman']:.3f} [{p['ci_low']:.3f}, {p['ci_high']:.3f}]" for p in per_seed),
          mean_ci([p["spearman"] for p in per_seed]),
          mean_ci([p["top_overlap"] for p in per_seed]),
        ]
      )
    chance = mems[0]["ground_truth"]["top_chance"]
    out += table(
      [
        "score",
        "layer",
        "Spearman per seed 0 / 1 / 2 [bootstrap 95%]",
        "mean over seeds",
        f"top-10% overlap (chance {chance:.2f})",
      ],
      rows,
    )
    by = mems[0]["ground_truth"]["by_models"]
    best = {(r["score"], r["layer"]) for r in _gt_rows(mems[0]) if r["score"] in ("class_loss", "p_own")}
    lines = []
    for level in by:
      cells = [
        f"{' '.join(filter(None, (r['score'], r['layer'])))}: {r['spearman']:.3f} "
        f"(CI width {r['ci_high'] - r['ci_low']:.3f})"
        for r in level["rows"]
        if (r["score"], r["layer"]) in best and r["heads"] in ("", "mean")
      ]
      lines.append(f"- K = {level['num_models']}: " + "; ".join(cells))
    out += ["", "By number of FZ models (seed 0):", "", *lines, ""]
  return out


def auc_tables(root: str) -> list[str]:
  """Noisy-vs-clean AUC of each score before (epoch 15) and after (epoch 40) the noise is fitted."""
  paths = {s: f"{root}/noisy_s{s}/memorization.json" for s in SEEDS}
  if not all(os.path.exists(p) for p in paths.values()):
    return []
  mems = {s: json.load(open(p)) for s, p in paths.items()}
  keys = sorted({(r["score"], r["layer"], r["heads"]) for r in mems[0]["noisy_vs_clean"]}, key=str)
  steps = sorted({r["step"] for r in mems[0]["noisy_vs_clean"]})
  rows = []
  for key in keys:
    cells = []
    for step in steps:
      vals = [
        next(
          r["auc"]
          for r in mems[s]["noisy_vs_clean"]
          if (r["score"], r["layer"], r["heads"]) == key and r["step"] == step
        )
        for s in SEEDS
      ]
      cells.append(mean_ci(vals))
    rows.append([key[0], key[1] or "–", key[2] or "–", *cells])
  epoch_of = {r["step"]: r["epoch"] for r in mems[0]["noisy_vs_clean"]}
  epochs = [f"epoch {epoch_of[s]:g}" for s in steps]
  return ["### Noisy-vs-clean ROC AUC before and after the noise is fitted", ""] + table(
    ["score", "layer", "heads", *epochs], rows
  )


def lambda_tables(root: str) -> list[str]:
  def read(path):
    with open(path) as f:
      return [r for r in csv.DictReader(f) if r.get("status", "done") == "done"]

  out = ["### λ sweep (15 epochs): random-label accuracy of `pre_logits` and class accuracy", ""]
  rows_pe = read(f"{root}/lam_pe/summary.csv")
  rows = []
  for n in (200, 1000):
    for lam in sorted({float(r["rlp.reg_lambda"]) for r in rows_pe}):
      sel = [r for r in rows_pe if int(r["rlp.num_labels"]) == n and float(r["rlp.reg_lambda"]) == lam]
      acc = [float(r["rlp/pre_logits/accuracy"]) for r in sel]
      train = [float(r["train/accuracy"]) for r in sel]
      test = [float(r["test/accuracy"]) for r in sel]
      rows.append([n, f"{lam:g}", f"{lam * n:g}", mean_ci(acc), mean_ci(train), mean_ci(test)])
  out += table(["n", "λ per example", "= λ paper", "random-label acc.", "train acc.", "test acc."], rows)
  out += ["", "The paper convention at λ_paper = n·λ_per-example, seed 0 (same numbers expected):", ""]
  rows = []
  for n in (200, 1000):
    paper = read(f"{root}/lam_paper{n}/summary.csv")
    for r in sorted(paper, key=lambda r: float(r["rlp.reg_lambda"])):
      lam_p = float(r["rlp.reg_lambda"])
      twin = [
        q
        for q in rows_pe
        if int(q["rlp.num_labels"]) == n
        and int(q["seed"]) == 0
        and math.isclose(float(q["rlp.reg_lambda"]) * n, lam_p)
      ]
      rows.append(
        [
          n,
          f"{lam_p:g}",
          f"{float(r['rlp/pre_logits/accuracy']):.4f}",
          f"{float(twin[0]['rlp/pre_logits/accuracy']):.4f}" if twin else "–",
          f"{float(r['test/accuracy']):.4f}",
          f"{float(twin[0]['test/accuracy']):.4f}" if twin else "–",
        ]
      )
  out += table(
    ["n", "λ paper", "random-label acc.", "per-example twin", "test acc.", "per-example twin"], rows
  )
  if os.path.exists(f"{root}/lam_paper_n100k/summary.csv"):
    out += [
      "",
      "The paper's λ values at the paper's n = 100,000 (paper convention, seed 0, a smoke run):",
      "",
    ]
    paper = sorted(read(f"{root}/lam_paper_n100k/summary.csv"), key=lambda r: float(r["rlp.reg_lambda"]))
    rows = [
      [f"{float(r['rlp.reg_lambda']):g}"]
      + [f"{float(r[k]):.4f}" for k in ("rlp/pre_logits/accuracy", "train/accuracy", "test/accuracy")]
      for r in paper
    ]
    out += table(["λ paper", "random-label acc.", "train acc.", "test acc."], rows)
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--root", required=True)
  ap.add_argument("--out", required=True)
  args = ap.parse_args()
  parts = [probe_tables(args.root), ground_truth_tables(args.root), auc_tables(args.root)]
  if glob.glob(f"{args.root}/lam_paper1000/summary.csv"):
    parts.append(lambda_tables(args.root))
  text = "\n\n".join("\n".join(p) for p in parts if p) + "\n"
  with open(args.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
