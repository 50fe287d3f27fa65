r"""Per-example memorization scores from the RLP heads (docs/design.md §4), aligned to the dataset index.

For every training example ``i`` (the examples trained on, all of them, in eval mode) and every RLP head
``h`` on every measured layer, at the chosen checkpoints, with the heads saved in that checkpoint (the
online heads):

  p_own    softmax probability of the example's own random label ŷ_h(i)
  correct  argmax == ŷ_h(i)
  margin   logit of ŷ_h(i) minus the largest other logit (> 0 iff correct, up to exact ties)

and, with ``offline=True``, the same three from offline heads (``offline_p_own`` ...: fresh heads fitted to
the frozen network at that checkpoint, training/offline_heads.py); with ``probe=True``, ``probe_margin`` and
``probe_correct`` of the converged probe fitted there (heads/ridge_probe.py: a closed-form fit on
standardized features, blind to scale and budget). Beside them, per example, the baseline
that needs no head: the classifier's own view of the label it was trained on (possibly noisy),

  class_loss    cross-entropy of the class logits on the trained-on label (the classic noisy-label
                detector: a wrong label the network has not fitted costs a large loss)
  class_margin  logit of the trained-on label minus the largest other

Written to ``DIR/memorization.npz``, **aligned to the dataset index**: every per-example array has
length m (the train split) and row ``i`` is example ``i``; rows of examples not trained on (dataset
fraction) have ``scored = False`` and NaN scores. Arrays:

  index (m,)  scored (m,)  label (m,) clean class label  train_label (m,) the label trained on
  is_noisy (m,) (all False without label noise)
  steps (C,)  epochs (C,)  layers (L,)  num_labels ()
  rlp_labels (C, m, H) the random labels each checkpoint was scored against
  p_own/<layer>, margin/<layer> (C, m, H) float32,  correct/<layer> (C, m, H) bool
  (offline_p_own/<layer> ... likewise),  class_loss, class_margin (C, m) float32

The one-number score of an example (for ranking) is one of these, averaged over the heads, at one step
(``score``).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import special

from rlp_jax.infra import rundir
from rlp_jax.infra.errors import UserError

SCORE_FILE = "memorization.npz"
KINDS = ("p_own", "margin", "correct")
OFFLINE_KINDS = tuple(f"offline_{k}" for k in KINDS)
# The converged probe's (heads/ridge_probe.py), fitted at the checkpoint: the own label's score minus the
# largest other, and whether it is the argmax.
PROBE_KINDS = ("probe_margin", "probe_correct")
CLASS_KINDS = ("class_loss", "class_margin")
ALL_KINDS = KINDS + OFFLINE_KINDS + PROBE_KINDS + CLASS_KINDS


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


def class_scores(class_logits: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
  """``class_logits`` (B, C), trained-on labels (B,) -> class_loss, class_margin (B,) float32."""
  logits = np.asarray(class_logits, np.float64)
  label = np.asarray(label)
  loss = special.logsumexp(logits, -1) - logits[np.arange(len(label)), label]
  # The margin as the heads' scores compute it, with one "head" whose labels are the class labels.
  margin = scores_from_logits(logits[:, None], label[:, None])["margin"][:, 0]
  return {"class_loss": loss.astype(np.float32), "class_margin": margin}


def collect(
  batches: Iterable[tuple[Mapping[str, np.ndarray], Mapping[str, np.ndarray]]], num_examples: int
) -> dict[str, np.ndarray]:
  """Scores of every real example, placed at row ``batch['index']`` of length-m arrays.

  ``batches`` yields ``(batch, {layer: (B, H, n) logits})`` (training/evaluators.head_logits). Batches come
  in whatever order the input pipeline reads them; alignment rests on each example's own ``index`` alone
  (docs/design.md §2), so ``rlp_labels`` here is (m, H), the labels of this one pass.
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
    if "class_logits" in batch:
      for kind, value in class_scores(batch["class_logits"][real], batch["label"][real]).items():
        out.setdefault(kind, np.full(m, np.nan, np.float32))[idx] = value
    for layer, logits in logits_by_layer.items():
      for kind, value in scores_from_logits(np.asarray(logits)[real], batch["rlp_labels"][real]).items():
        key = f"{kind}/{layer}"
        if key not in out:
          fill = False if kind == "correct" else np.nan
          out[key] = np.full((m,) + value.shape[1:], fill, value.dtype)
        out[key][idx] = value
  if "scored" not in out:
    raise UserError("no training examples to score")
  out["index"] = np.arange(m)
  return out


def label_epoch(step: int, steps_per_epoch: int, num_epochs: int) -> int:
  """The epoch whose random labels the heads saved at ``step`` last trained on.

  Step s (s >= 1) is the s-th update, in epoch ``(s - 1) // steps_per_epoch``; step 0 (initialization)
  reads epoch 0. Only ``label_mode='shuffled'`` draws new labels per epoch (docs/design.md §2), and there
  a checkpoint scored against another epoch's labels would measure nothing but chance.
  """
  return min(max(step - 1, 0) // steps_per_epoch, num_epochs - 1)


def _choose_steps(saved: list[int], steps) -> list[int]:
  if steps == "last":
    return [saved[-1]]
  if steps == "all":
    return saved
  chosen = sorted(int(s) for s in steps)
  missing = [s for s in chosen if s not in saved]
  if missing:
    raise UserError(f"--steps: no checkpoint at {missing}; saved steps are {saved}.")
  return chosen


def frozen_scores(
  experiment, params, batch_stats, layers, scored: np.ndarray, epoch: int, *, offline: bool, probe: bool
) -> dict[str, np.ndarray]:
  """Per-example scores of controls fitted to the frozen network, from one feature extraction, (m, H) each.

  With ``offline``, ``offline_<kind>/<layer>`` of fresh heads (``experiment.config.offline``'s budget);
  with ``probe``, ``probe_margin/<layer>`` and ``probe_correct/<layer>`` of the converged probe. Both are
  fitted to, and score, the examples ``scored`` marks (the trained-on ones, in index order).
  """
  from flax import nnx

  from rlp_jax.heads import ridge_probe
  from rlp_jax.training import offline_heads

  feats, y = offline_heads.extract_features(experiment, params["model"], batch_stats, layers, epoch=epoch)
  rows = np.flatnonzero(scored)
  if len(rows) != len(y):
    raise UserError(
      f"the frozen features cover {len(y)} examples, the scores {len(rows)}; they must be the same."
    )
  out = {}

  def scatter(prefix: str, layer: str, stats: dict[str, np.ndarray]) -> None:
    for kind, value in stats.items():
      fill = False if kind == "correct" else np.nan
      out[f"{prefix}_{kind}/{layer}"] = np.full((len(scored), *value.shape[1:]), fill, value.dtype)
      out[f"{prefix}_{kind}/{layer}"][rows] = value

  if offline:
    cfg = experiment.config.offline
    fitted = offline_heads.standardized(feats) if cfg.standardize else feats
    graphdef, head_params = offline_heads.train_heads(
      experiment, fitted, y, num_epochs=cfg.num_epochs, batch_size=cfg.batch_size
    )
    heads = nnx.merge(graphdef, head_params).layers
    for layer in layers:
      # All (M, H, n) logits at once, like offline_heads' features: for the small runs this analysis is for.
      logits = np.asarray(heads[layer](fitted[layer]))[..., : experiment.num_labels]
      scatter("offline", layer, scores_from_logits(logits, y))
  if probe:
    for layer in layers:
      fit = ridge_probe.fit(feats[layer], y, experiment.num_labels)
      scatter("probe", layer, ridge_probe.own_label_stats(fit, feats[layer], y))
  return out


def compute(
  workdir: str,
  steps="last",
  layers=None,
  *,
  config=None,
  output: str = SCORE_FILE,
  offline=False,
  probe=False,
  lock=False,
  log=print,
):
  """Scores at the chosen checkpoints (``'last'``, ``'all'`` or a list of steps), written to DIR/<output>.

  Returns the arrays as written. ``config`` defaults to the run's own (``rundir.load_config``). With
  ``offline``, also the scores of offline heads fitted at each of those checkpoints (Fig. 2B's heads); with
  ``probe``, the converged probe's. With ``lock``, once the request is known to be valid, the scoring and
  the write hold ``DIR/.memorization.lock``: a second scorer of the same run is refused in one line.
  """
  from rlp_jax.training import checkpointing
  from rlp_jax.training import experiment as experiment_lib

  config = config or rundir.load_config(workdir)
  experiment, state = experiment_lib.build(config)
  if not experiment.rlp_layers:
    raise UserError("The run has no RLP heads (config.rlp.num_heads=0): there is nothing to score with.")
  layers = list(layers or experiment.rlp_layers)
  unknown = [name for name in layers if name not in experiment.rlp_layers]
  if unknown:
    raise UserError(f"--layers={unknown}: the run's heads read {list(experiment.rlp_layers)}.")
  # The online heads are needed: snapshots written with checkpoint.snapshot_heads, else the resume state.
  ckpt = checkpointing.Checkpoints(workdir, config, read_only=True)
  kind, saved = ckpt.analysis_steps(heads=True)
  if not saved:
    raise UserError(
      f"{workdir}/{kind} holds no checkpoint with the online heads (config.checkpoint.snapshot_heads="
      "True keeps them in every snapshot)."
    )
  chosen = _choose_steps(saved, steps)
  what = f"the same {output}"
  with rundir.lock(workdir, enabled=lock, name=f".{os.path.splitext(output)[0]}.lock", what=what):
    return _score_steps(
      workdir, config, experiment, state, ckpt, kind, chosen, layers, output, offline, probe, log
    )


def _score_steps(workdir, config, experiment, state, ckpt, kind, chosen, layers, output, offline, probe, log):
  """compute's work once the request is valid: score each chosen checkpoint, then write DIR/<output>."""
  from rlp_jax.training import evaluators

  per_step = []
  for step in chosen:
    restored = ckpt.restore_for_analysis(kind, step, state)
    epoch = label_epoch(step, experiment.steps_per_epoch, config.num_epochs)
    batches = evaluators.head_logits(experiment, restored.params, restored.batch_stats, layers, epoch=epoch)
    per_step.append(collect(batches, experiment.info.num_train))
    if offline or probe:
      per_step[-1].update(
        frozen_scores(
          experiment,
          restored.params,
          restored.batch_stats,
          layers,
          per_step[-1]["scored"],
          epoch,
          offline=offline,
          probe=probe,
        )
      )
    log(
      f"scored step {step}: mean probability of the own random label "
      + ", ".join(f"{k}={np.nanmean(per_step[-1][f'p_own/{k}']):.4f}" for k in layers)
    )
  per_checkpoint = ("rlp_labels", *CLASS_KINDS)
  out = {k: v for k, v in per_step[0].items() if "/" not in k and k not in per_checkpoint}
  # Per checkpoint, like the scores: with shuffled labels each one was scored against its own epoch's.
  for key in [k for k in per_step[0] if "/" in k or k in per_checkpoint]:
    out[key] = np.stack([s[key] for s in per_step])
  out.update(
    steps=np.asarray(chosen),
    epochs=np.asarray(chosen) / experiment.steps_per_epoch,
    layers=np.asarray(layers),
    num_labels=np.asarray(experiment.num_labels),
  )
  rundir.write_npz(os.path.join(workdir, output), out)
  return out


def load(path: str) -> dict[str, np.ndarray]:
  """The arrays of a scores file; a damaged one is reported in one line naming it (never deleted)."""
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise UserError(
      f"{path} cannot be read ({type(e).__name__}: {e}); recompute it with python -m rlp_jax.memorization."
    ) from None


def score(
  data: Mapping[str, np.ndarray], kind: str = "p_own", layer: str | None = None, step=-1, head=None
) -> np.ndarray:
  """One number per example (length m, NaN where not scored): ``kind`` at ``step`` on ``layer``.

  ``kind`` is averaged over the heads (or head ``head`` alone); ``step`` is a saved step number, or -1 for
  the last one computed; ``layer`` defaults to the last layer (the class kinds have none).
  """
  if kind not in ALL_KINDS:
    raise UserError(f"score kind must be one of {ALL_KINDS}, got {kind!r}")
  steps = list(np.asarray(data["steps"]))
  pos = -1 if step == -1 else steps.index(step)
  if kind in CLASS_KINDS:
    if kind not in data:
      raise UserError(f"{kind}: not in these scores (computed before class scores existed); recompute them.")
    return np.where(data["scored"], np.asarray(data[kind][pos], np.float64), np.nan)
  layers = [str(x) for x in data["layers"]]
  layer = layer or layers[-1]
  if layer not in layers:
    raise UserError(f"layer {layer!r} was not scored; the file has {layers}")
  if f"{kind}/{layer}" not in data:
    flag = "--probe" if kind in PROBE_KINDS else "--offline"
    raise UserError(f"{kind}: not in these scores; compute them with {flag}.")
  per_head = np.asarray(data[f"{kind}/{layer}"][pos], np.float64)
  values = per_head.mean(-1) if head is None else per_head[:, head]
  return np.where(data["scored"], values, np.nan)
