r"""Per-example memorization scores from the RLP heads, and the tools on top of them.

  python -m rlp_jax.memorization --workdir=DIR [--steps=last|all|S1,S2] [--score=p_own|margin|correct]
      [--layer=pre_logits] [--k=8] [--external=FILE [--external_score_key=tr_mem]
      [--external_label_key=tr_labels]]

For every training example ``i`` (the examples trained on, all of them, in eval mode) and every RLP head
``h`` on every measured layer, at the chosen checkpoints, with the heads saved in that checkpoint (the
online heads):

  p_own    softmax probability of the example's own random label ŷ_h(i)
  correct  argmax == ŷ_h(i)
  margin   logit of ŷ_h(i) minus the largest other logit (> 0 iff correct, up to exact ties)

Written to ``DIR/memorization.npz``, **aligned to the dataset index**: every per-example array has
length m (the train split) and row ``i`` is example ``i``; rows of examples not trained on (dataset
fraction) have ``scored = False`` and NaN scores. Arrays:

  index (m,)  scored (m,)  label (m,) clean class label  train_label (m,) the label trained on
  is_noisy (m,) (all False without label noise)  rlp_labels (m, H)
  steps (C,)  epochs (C,)  layers (L,)  num_labels ()
  p_own/<layer>, margin/<layer> (C, m, H) float32,  correct/<layer> (C, m, H) bool

The one-number score of an example (for ranking) is one of these, averaged over the heads, at one step.

Tools: ``select_per_class`` + ``save_image_grid`` (k most / least memorized examples per class),
``spearman`` against an external per-example score keyed by index (``correlate_external`` first checks that
both files agree on the class labels, i.e. on the example order), ``roc_auc`` of the score for noisy vs
clean examples, and ``capacity``: the mean chance-corrected random-label accuracy over K independent label
draws (``config.rlp.num_heads=K``) with a bootstrap confidence interval, an empirical Rademacher-style
estimate of how much arbitrary labeling the representation can fit.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from rlp_jax.infra import rundir

SCORE_FILE = "memorization.npz"
KINDS = ("p_own", "margin", "correct")


# ----------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------


def scores_from_logits(logits: np.ndarray, own: np.ndarray) -> dict[str, np.ndarray]:
  """``logits`` (B, H, n), ``own`` labels (B, H) -> p_own, margin (float32), correct (bool), each (B, H)."""
  logits = np.asarray(logits, np.float64)
  own = np.asarray(own)[..., None]
  own_logit = np.take_along_axis(logits, own, -1)[..., 0]
  shifted = logits - logits.max(-1, keepdims=True)
  log_p = np.take_along_axis(shifted, own, -1)[..., 0] - np.log(np.exp(shifted).sum(-1))
  others = logits.copy()
  np.put_along_axis(others, own, -np.inf, -1)
  margin = own_logit - others.max(-1)
  return {
    "p_own": np.exp(log_p).astype(np.float32),
    "margin": margin.astype(np.float32),
    "correct": logits.argmax(-1) == own[..., 0],  # as the online metric counts it
  }


def collect(
  batches: Iterable[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]], num_examples: int
) -> dict[str, np.ndarray]:
  """Scores of every real example, placed at row ``batch['index']`` of length-m arrays.

  ``batches`` yields ``(batch, {layer: (B, H, n) logits})`` (training/evaluators.head_logits). Batches come
  in whatever order the input pipeline reads them; alignment rests on each example's own ``index`` alone.
  """
  m = num_examples
  out: dict[str, np.ndarray] = {}
  for batch, logits_by_layer in batches:
    real = np.asarray(batch["mask"], bool)
    idx = np.asarray(batch["index"])[real].astype(np.int64)
    if "scored" not in out:
      h = batch["rlp_labels"].shape[1]
      out["scored"] = np.zeros(m, bool)
      out["label"] = np.full(m, -1, np.int64)
      out["train_label"] = np.full(m, -1, np.int64)
      out["is_noisy"] = np.zeros(m, bool)
      out["rlp_labels"] = np.full((m, h), -1, np.int64)
    out["scored"][idx] = True
    out["label"][idx] = np.asarray(batch.get("clean_label", batch["label"]))[real]
    out["train_label"][idx] = np.asarray(batch["label"])[real]
    if "is_noisy" in batch:
      out["is_noisy"][idx] = np.asarray(batch["is_noisy"])[real]
    out["rlp_labels"][idx] = np.asarray(batch["rlp_labels"])[real]
    for layer, logits in logits_by_layer.items():
      for kind, value in scores_from_logits(np.asarray(logits)[real], batch["rlp_labels"][real]).items():
        key = f"{kind}/{layer}"
        if key not in out:
          fill = False if kind == "correct" else np.nan
          out[key] = np.full((m,) + value.shape[1:], fill, value.dtype)
        out[key][idx] = value
  if "scored" not in out:
    raise ValueError("no training examples to score")
  out["index"] = np.arange(m)
  return out


def compute(workdir: str, steps="last", layers=None, *, config=None, output: str = SCORE_FILE, log=print):
  """Scores at the chosen checkpoints (``'last'``, ``'all'`` or a list of steps), written to DIR/<output>.

  Returns the arrays as written. ``config`` defaults to the run's own (``rundir.load_config``).
  """
  from rlp_jax.training import checkpointing, evaluators, experiment

  config = config or rundir.load_config(workdir)
  exp, state = experiment.build(config)
  if not exp.rlp_layers:
    raise ValueError("The run has no RLP heads (config.rlp.num_heads=0): there is nothing to score with.")
  layers = list(layers or exp.rlp_layers)
  unknown = [name for name in layers if name not in exp.rlp_layers]
  if unknown:
    raise ValueError(f"--layers={unknown}: the run's heads read {list(exp.rlp_layers)}.")
  mngr = checkpointing.manager(workdir)
  saved = sorted(mngr.all_steps())
  if not saved:
    raise FileNotFoundError(f"{workdir}/checkpoints holds no checkpoint.")
  if steps == "last":
    chosen = [saved[-1]]
  elif steps == "all":
    chosen = saved
  else:
    chosen = sorted(int(s) for s in steps)
    missing = [s for s in chosen if s not in saved]
    if missing:
      raise ValueError(f"--steps: no checkpoint at {missing}; saved steps are {saved}.")

  per_step = []
  for step in chosen:
    restored = checkpointing.restore(mngr, step, state)
    # The labels the heads last trained on (they differ per epoch only with label_mode=shuffled).
    epoch = min(max(step - 1, 0) // exp.steps_per_epoch, config.num_epochs - 1)
    batches = evaluators.head_logits(exp, restored.params, restored.batch_stats, layers, epoch=epoch)
    per_step.append(collect(batches, exp.info.num_train))
    log(
      f"scored step {step}: " + ", ".join(f"{k}={np.nanmean(per_step[-1][f'p_own/{k}']):.4f}" for k in layers)
    )
  out = {k: v for k, v in per_step[0].items() if "/" not in k}
  for kind in KINDS:
    for layer in layers:
      out[f"{kind}/{layer}"] = np.stack([s[f"{kind}/{layer}"] for s in per_step])
  out.update(
    steps=np.asarray(chosen),
    epochs=np.asarray(chosen) / exp.steps_per_epoch,
    layers=np.asarray(layers),
    num_labels=np.asarray(exp.num_labels),
  )
  path = os.path.join(workdir, output)
  buf = io.BytesIO()
  np.savez_compressed(buf, **out)
  rundir.atomic_write(path, buf.getvalue())
  return out


def load(path: str) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def score(
  data: Mapping[str, np.ndarray], kind: str = "p_own", layer: str | None = None, step=-1
) -> np.ndarray:
  """One number per example (length m, NaN where not scored): ``kind`` averaged over the heads at ``step``
  (a saved step number, or -1 for the last one computed), on ``layer`` (default: the last layer)."""
  if kind not in KINDS:
    raise ValueError(f"score kind must be one of {KINDS}, got {kind!r}")
  layers = [str(x) for x in data["layers"]]
  layer = layer or layers[-1]
  if layer not in layers:
    raise ValueError(f"layer {layer!r} was not scored; the file has {layers}")
  steps = list(np.asarray(data["steps"]))
  pos = -1 if step == -1 else steps.index(step)
  values = np.asarray(data[f"{kind}/{layer}"][pos], np.float64).mean(-1)
  return np.where(data["scored"], values, np.nan)


# ----------------------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------------------


def _finite_pairs(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
  ok = np.isfinite(a) & np.isfinite(b)
  return a[ok], b[ok]


def spearman(a, b) -> float:
  """Spearman's rank correlation: Pearson correlation of the (average-tie) ranks; NaN pairs dropped."""
  a, b = _finite_pairs(a, b)
  if len(a) < 2:
    return float("nan")
  ra, rb = stats.rankdata(a) - (len(a) + 1) / 2, stats.rankdata(b) - (len(b) + 1) / 2
  denom = np.sqrt((ra**2).sum() * (rb**2).sum())
  return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def roc_auc(score_values, positive) -> float:
  """Area under the ROC curve of ``score`` for ``positive`` vs the rest (Mann–Whitney U / (n+ n-)).

  The probability that a random positive scores above a random negative, ties counting one half.
  """
  s = np.asarray(score_values, np.float64)
  pos = np.asarray(positive, bool)
  ok = np.isfinite(s)
  s, pos = s[ok], pos[ok]
  n_pos, n_neg = int(pos.sum()), int((~pos).sum())
  if not n_pos or not n_neg:
    return float("nan")
  ranks = stats.rankdata(s)
  return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def capacity(correct, num_labels: int, *, num_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
  """Empirical Rademacher-style capacity from K independent random-label draws.

  ``correct`` (M, K): whether head k (its own label draw) predicts example i's random label. The estimate
  is the mean over heads of the chance-corrected accuracy ``(acc - 1/n) / (1 - 1/n)`` (0 = chance,
  1 = every arbitrary labeling fitted). The interval is a percentile bootstrap that resamples examples
  and label draws (heads) together.
  """
  c = np.asarray(correct, np.float64)
  if c.ndim == 1:
    c = c[:, None]
  m, k = c.shape
  chance = 1.0 / num_labels

  def corrected(acc):
    return (acc - chance) / (1.0 - chance)

  rng = np.random.default_rng(seed)
  boots = np.empty(num_boot)
  for b in range(num_boot):
    rows, cols = rng.integers(0, m, m), rng.integers(0, k, k)
    boots[b] = corrected(c[rows][:, cols].mean())
  lo, hi = np.quantile(boots, [(1 - level) / 2, 1 - (1 - level) / 2])
  per_head = c.mean(0)
  return {
    "estimate": float(corrected(per_head.mean())),
    "ci_low": float(lo),
    "ci_high": float(hi),
    "level": level,
    "accuracy": float(per_head.mean()),
    "chance": chance,
    "num_heads": k,
    "num_examples": m,
    "per_head_accuracy": per_head.tolist(),
  }


# ----------------------------------------------------------------------------------------------------
# External per-example scores
# ----------------------------------------------------------------------------------------------------


def load_external(path: str, score_key: str = "score", label_key: str = "label", index_key: str = "index"):
  """``(index, score, labels or None)`` from ``.npz`` / ``.npy`` / ``.csv``.

  ``.npz``: arrays ``score_key`` (and optionally ``index_key``, ``label_key``); without an index the
  array order is taken as the index (e.g. Feldman & Zhang's ``cifar100_infl_matrix.npz`` with
  ``--external_score_key=tr_mem --external_label_key=tr_labels``). ``.npy``: the scores, in index order.
  ``.csv``: a header with ``index_key``, ``score_key`` and optionally ``label_key`` columns.
  """
  ext = os.path.splitext(path)[1].lower()
  labels = None
  if ext == ".npz":
    with np.load(path) as f:
      if score_key not in f:
        raise KeyError(f"{path} has no array {score_key!r} (it has {f.files}); pass its score key.")
      s = np.asarray(f[score_key], np.float64)
      index = np.asarray(f[index_key]) if index_key in f else np.arange(len(s))
      labels = np.asarray(f[label_key]) if label_key in f else None
  elif ext == ".npy":
    s = np.load(path).astype(np.float64)
    index = np.arange(len(s))
  elif ext == ".csv":
    with open(path, newline="") as f:
      rows = list(csv.DictReader(f))
    if not rows or index_key not in rows[0] or score_key not in rows[0]:
      raise KeyError(f"{path} needs columns {index_key!r} and {score_key!r}.")
    index = np.asarray([int(r[index_key]) for r in rows])
    s = np.asarray([float(r[score_key]) for r in rows])
    if label_key in rows[0]:
      labels = np.asarray([int(r[label_key]) for r in rows])
  else:
    raise ValueError(f"{path}: use a .npz, .npy or .csv file.")
  return index.astype(np.int64), s, labels


def correlate_external(
  data: Mapping[str, np.ndarray],
  ours: np.ndarray,
  index: np.ndarray,
  external: np.ndarray,
  external_labels: np.ndarray | None = None,
  *,
  min_label_agreement: float = 0.99,
) -> dict:
  """Spearman correlation of our per-example score with an external one keyed by index.

  When the external file has class labels, they are compared with ours first: the same examples in the
  same order agree on (nearly) every label; a file in another order agrees on about 1/num_classes of them,
  and is refused instead of yielding a meaningless correlation.
  """
  m = len(ours)
  index = np.asarray(index, np.int64)
  if index.min() < 0 or index.max() >= m:
    raise ValueError(f"external indices span [{index.min()}, {index.max()}]; the dataset has {m} examples.")
  theirs = np.full(m, np.nan)
  theirs[index] = external
  out: dict = {}
  if external_labels is not None:
    scored = data["scored"][index]
    agree = float(np.mean(np.asarray(external_labels)[scored] == data["label"][index][scored]))
    out["label_agreement"] = agree
    if agree < min_label_agreement:
      raise ValueError(
        f"The external file's class labels agree with the dataset's on only {agree:.1%} of the examples: "
        "its example order is not the dataset index. Reorder it (or give its index column) first."
      )
  a, b = _finite_pairs(ours, theirs)
  out.update(spearman=spearman(ours, theirs), num_examples=len(a))
  return out


# ----------------------------------------------------------------------------------------------------
# Image grids
# ----------------------------------------------------------------------------------------------------


def select_per_class(
  values: np.ndarray, labels: np.ndarray, k: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
  """``{class: (k most memorized indices, highest first; k least memorized, lowest first)}``.

  Unscored examples (NaN) are never selected; ties are broken by index, so the choice is deterministic.
  """
  out = {}
  values = np.asarray(values, np.float64)
  for c in np.unique(labels[labels >= 0]):
    idx = np.flatnonzero((labels == c) & np.isfinite(values))
    most = idx[np.lexsort((idx, -values[idx]))][:k]
    least = idx[np.lexsort((idx, values[idx]))][:k]
    out[int(c)] = (most, least)
  return out


def load_train_images(config, info=None) -> np.ndarray:
  """The (eval-mode) training images, by index: (m, H, W, C) float32, zeros where not in the train set."""
  from rlp_jax.data import input_pipeline

  info = info or input_pipeline.get_info(config)
  images = None
  for batch in input_pipeline.eval_batches(config, info, "train_eval", 0, limit=-1):
    real = batch["mask"]
    if images is None:
      images = np.zeros((info.num_train,) + batch["image"].shape[1:], np.float32)
    images[batch["index"][real]] = batch["image"][real]
  return images


def _tile(img: np.ndarray) -> np.ndarray:
  img = np.asarray(img, np.float32)
  if img.ndim == 2:
    img = img[..., None]
  lo, hi = img.min(), img.max()
  img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
  return np.repeat(img, 3, -1) if img.shape[-1] == 1 else img[..., :3]


def save_image_grid(
  path: str,
  images: np.ndarray,
  selection: Mapping[int, tuple[np.ndarray, np.ndarray]],
  values: np.ndarray,
  *,
  class_names: Sequence[str] | None = None,
  title: str = "",
) -> np.ndarray:
  """One row per class: its k most memorized examples, a gap, its k least memorized. Returns the mosaic."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  classes = sorted(selection)
  k = max(max(len(a), len(b)) for a, b in selection.values())
  h, w = images.shape[1:3]
  pad, gap = 1, max(w // 2, 2)
  cell_w, cell_h = w + pad, h + pad
  mosaic = np.ones((len(classes) * cell_h, 2 * k * cell_w + gap, 3), np.float32)
  for r, c in enumerate(classes):
    for side, idx in enumerate(selection[c]):
      for j, i in enumerate(idx):
        x0 = side * (k * cell_w + gap) + j * cell_w
        mosaic[r * cell_h : r * cell_h + h, x0 : x0 + w] = _tile(images[i])
  fig_w = max(6.0, mosaic.shape[1] / mosaic.shape[0] * 0.45 * len(classes) + 1.5)
  fig, ax = plt.subplots(figsize=(fig_w, 0.45 * len(classes) + 1.2), dpi=120)
  ax.imshow(mosaic, interpolation="nearest")
  ax.set_yticks([r * cell_h + h / 2 for r in range(len(classes))])
  ax.set_yticklabels([class_names[c] if class_names else str(c) for c in classes])
  ax.set_xticks([k * cell_w / 2, k * cell_w + gap + k * cell_w / 2])
  ax.set_xticklabels([f"{k} most memorized (highest first)", f"{k} least memorized (lowest first)"])
  ax.set_ylabel("class")
  ax.tick_params(length=0)
  for s in ax.spines.values():
    s.set_visible(False)
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return mosaic


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------


def analyze(
  workdir: str,
  data: Mapping[str, np.ndarray],
  *,
  kind: str = "p_own",
  layer: str | None = None,
  k: int = 8,
  images: np.ndarray | None = None,
  external: tuple | None = None,
  num_boot: int = 1000,
) -> dict:
  """Capacity per layer, noisy-vs-clean AUC, the image grid and the external correlation -> a dict
  (also written to ``DIR/memorization.json``)."""
  layers = [str(x) for x in data["layers"]]
  layer = layer or layers[-1]
  values = score(data, kind, layer)
  scored = data["scored"]
  out: dict = {"score": kind, "layer": layer, "step": int(data["steps"][-1]), "capacity": {}}
  for name in layers:
    correct = data[f"correct/{name}"][-1][scored]
    out["capacity"][name] = capacity(correct, int(data["num_labels"]), num_boot=num_boot)
  if data["is_noisy"][scored].any():
    out["noisy_vs_clean_auc"] = roc_auc(values[scored], data["is_noisy"][scored])
  if images is not None:
    grid = os.path.join(workdir, f"memorization_grid_{layer}.png")
    selection = select_per_class(values, data["label"], k)
    save_image_grid(
      grid, images, selection, values, title=f"{kind} of the own random label, {layer}, step {out['step']}"
    )
    out["image_grid"] = grid
  if external is not None:
    out["external"] = correlate_external(data, values, *external)
  with open(os.path.join(workdir, "memorization.json"), "w") as f:
    json.dump(out, f, indent=2)
  return out
