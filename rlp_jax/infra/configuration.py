"""The full set of config keys with their defaults, and the checks that run before anything compiles.

Experiment files in ``configs/`` start from ``base_config()`` and change what they need, so every key a
user can pass on the command line (``--config.rlp.reg_lambda=1e4``) exists in every experiment, and an
unknown key is rejected by ml_collections' locked ConfigDict before any work starts.
"""

from __future__ import annotations

import math

import ml_collections

from rlp_jax.infra import model_registry
from rlp_jax.infra.errors import UserError

OPTIMIZERS = ("sgd", "adamw", "adam")
MAX_LABELS = 2**31 - 1
MAX_SEED = 2**31 - 1
# How random labels are drawn (data/labels.py, docs/design.md §2).
LABEL_MODES = ("fixed", "shuffled", "unique")
# What λ multiplies: L_reg per example, or the paper's Eq. 4 with its 1/n (heads/routing.py, §7).
REG_NORMALIZATIONS = ("per_example", "paper")


def optimizer_config(name: str, learning_rate: float, **overrides) -> ml_collections.ConfigDict:
  """One optimizer's settings. ``schedule`` is 'cosine' (linear warm-up, then cosine to 0) or 'constant'."""
  cfg = ml_collections.ConfigDict(
    dict(
      name=name,
      learning_rate=learning_rate,
      momentum=0.9,  # sgd only
      nesterov=False,  # sgd only
      b1=0.9,
      b2=0.999,  # adam/adamw only
      weight_decay=0.0,  # decoupled (adamw) or added to the gradient (sgd, adam); never on biases/norms
      warmup_epochs=0.0,
      schedule="cosine",
      grad_clip_norm=0.0,  # 0 = off; clips this group's gradients by their own global norm
    )
  )
  cfg.update(overrides)
  return cfg


def base_config() -> ml_collections.ConfigDict:
  """Every key, with defaults that make sense for a small CPU experiment."""
  c = ml_collections.ConfigDict()
  c.dataset = "digits"  # a tfds name, e.g. 'digits', 'mnist1d/4k', 'mnist1d/100k'
  c.data_dir = ""  # tfds data_dir; '' = tfds default (~/tensorflow_datasets or $TFDS_DATA_DIR)
  c.num_epochs = 100
  c.batch_size = 128  # global, over all devices and hosts
  c.seed = 0  # initialization, data order, dropout, random labels, noise, fractions
  c.label_smoothing = 0.0
  c.label_noise = 0.0  # exactly floor(p * m) trained-on examples get another class (Fig. 7C)
  c.dataset_fraction = 1.0  # train on exactly floor(f * m) examples (Fig. 7A/B)
  c.shuffle_buffer = 50_000
  c.max_steps_per_epoch = 0  # > 0 caps every epoch at this many steps (smoke tests on real data); 0 = all
  # JAX's persistent compilation cache (infra/compile_cache.py): a resumed or repeated run loads its
  # compiled steps instead of compiling them again. '' = off.
  c.compilation_cache_dir = "~/.cache/rlp_jax/xla"

  c.model = ml_collections.ConfigDict(dict(name="mlp", width=256, depth=2, dropout=0.0))
  # Each model's own keys with their defaults (infra/model_registry.py), e.g. the MLP's and CNN's
  # features_after_dropout (True sows the dropped-out features instead of those before the dropout,
  # docs/design.md §7) and the ViT's variant, patch_size, num_heads, dtype and classifier.
  c.model.update(model_registry.own_key_defaults())

  # Preprocessing and train-time augmentation (data/preprocess.py documents exactly what each does).
  c.augment = ml_collections.ConfigDict()
  c.augment.flip = False  # random horizontal flip of training images
  c.augment.crop = "none"  # train crop: 'none' (the eval resize + center crop) | 'inception' (random-resized)
  c.augment.image_size = 0  # side of the square model input; 0 = the dataset's own (fixed) image shape
  c.augment.eval_resize = 0  # eval: resize the shorter side to this, center-crop image_size (0 = image_size)
  c.augment.normalize = "unit"  # 'unit' [0, 1] | 'symmetric' [-1, 1] | 'cifar100' | 'imagenet' mean/std

  c.optimizer = optimizer_config("sgd", 0.1, warmup_epochs=1.0)

  c.rlp = ml_collections.ConfigDict()
  c.rlp.num_heads = 1  # parallel heads per layer, each with its own labels (A.8); 0 = no heads
  c.rlp.num_labels = 10  # n; ignored (set to m) with label_mode='unique'
  # Layer lists here are comma-separated sown names, 'all', or 'blocks' (every sown layer but pre_logits).
  c.rlp.layers = "pre_logits"
  c.rlp.reg_layers = "all"  # which of `layers` regularize: a list of them, 'all' (= layers), 'blocks' or ''
  c.rlp.reg_lambda = 0.0  # λ; 0 = pure measurement
  # What λ multiplies (docs/design.md §7): 'per_example' = mean -log(1 - p̂_ŷ); 'paper' = the paper's Eq. 4
  # with its 1/n, i.e. mean -log(1 - p̂_ŷ) / n, under which the paper's λ values (1e4 on ImageNet at
  # n = 100k) mean what they meant. λ_per_example = λ_paper / n. The paper configs use 'paper'.
  c.rlp.reg_normalization = "per_example"
  c.rlp.label_mode = "fixed"  # fixed | shuffled | unique
  c.rlp.hidden_dim = 0  # 0 = linear head; >0 = one hidden ReLU layer of this width (A.6)
  # Layers whose heads put a LayerNorm before the dense layer (the paper's heads on ViT blocks, Fig. 2C):
  # a layer list or '' (every head one dense layer, the paper's default head); the ViT configs: 'blocks'.
  c.rlp.norm_layers = ""
  c.rlp.dtype = "float32"  # head matmul inputs: float32 | bfloat16 (logits and losses stay float32)
  # > 0: compute the heads' losses this many labels at a time, recomputing each block's logits in the
  # backward pass, so a huge head's (batch x n) logits never exist whole; with a `model` mesh axis > 1,
  # within each device's shard of the labels. n is padded (masked labels) to a multiple of
  # chunk x model. 0 = full logits.
  c.rlp.label_chunk = 0
  # How the heads' loss statistics are computed: 'xla' (head_loss.py's blocks, any mesh) or 'pallas' (the
  # fused kernels of head_loss_pallas.py, one label shard, their own tiles: label_chunk is not used).
  c.rlp.loss_kernel = "xla"
  # How spatial/token maps become vectors (docs/design.md §1): 'classifier' reads them as the class head
  # reads the last one (a ViT's class token, else the mean over positions) | 'mean' (every position, a
  # class token included) | 'mean_patches' (a ViT's patch tokens only) | 'token' (the class token) | 'flatten'
  c.rlp.pool = "classifier"
  # The heads have their own optimizer. Default: Adam, constant lr 1e-3, no weight decay, no clipping.
  # Why: the head is a measuring instrument. It must keep tracking the features when the backbone's
  # cosine schedule has decayed to ~0 (so no decay of its own), and weight decay would cap its capacity
  # and bias the measurement of memorization downward.
  c.rlp.optimizer = optimizer_config("adam", 1e-3, schedule="constant")

  c.probes = ml_collections.ConfigDict()
  c.probes.layers = ""  # per-layer class probes (Fig. 9): a layer list or ''
  c.probes.optimizer = optimizer_config("adam", 1e-3, schedule="constant")

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 1
  c.eval.batch_size = 512
  c.eval.train_examples = (
    10_000  # fixed subset of training examples (unaugmented) for train metrics; -1 = all
  )
  c.eval.test_split = ""  # the tfds split evaluated as 'test'; '' = 'test', or 'validation' if there is none

  c.offline = ml_collections.ConfigDict()
  c.offline.at_init = True  # also train a head on the frozen network at initialization (Fig. 2B)
  # ... and a second one with a LayerNorm before its dense layer on every layer: scale-free, so it tells
  # whether the control's gap is the features' growth in norm or their content (docs/design.md §4)
  c.offline.at_init_scale_free = False
  # The converged capacity probe (heads/ridge_probe.py): a closed-form ridge fit of the random labels on
  # standardized features, blind to the features' scale and to any step budget; at init and at the end in
  # the run's table, on every checkpoint in `python -m rlp_jax.offline` (docs/design.md §4).
  c.offline.ridge_probe = False
  # z-score each feature over the fitted set before the offline heads (an affine map: the same hypothesis
  # class as the plain head, without the features' scale); accuracy against offline.num_epochs is then the
  # budget a head needs.
  c.offline.standardize = False
  c.offline.num_epochs = 100  # the same budget for every checkpoint
  c.offline.batch_size = 128
  c.offline.train_examples = -1  # training examples the offline head fits (-1 = all trained-on ones)

  # Device mesh (docs/design.md §5): the batch is split over `data`; large RLP heads' label axis over `model`.
  # -1 takes the remaining devices. fsdp additionally shards large parameters over `data`.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1, fsdp=False))

  # Checkpoints (docs/design.md §5, training/checkpointing.py). The resume state (everything, optimizer
  # moments included) is written in the background every `every_epochs` epochs and only the last `keep`
  # are kept; analysis snapshots (backbone parameters and batch statistics, plus the online heads with
  # `snapshot_heads`) at step 0 and every `snapshot_every_epochs` epochs (0 = only the first and last) are
  # all kept: offline heads (Fig. 2B) and per-example scores read them.
  c.checkpoint = ml_collections.ConfigDict(
    dict(every_epochs=1, keep=2, async_save=True, snapshot_every_epochs=1, snapshot_heads=False)
  )
  c.log_every_steps = 50
  return c


# Keys that may change between a run and its resumption without making it a different experiment.
RESUMABLE_KEYS = (
  "data_dir",
  "compilation_cache_dir",
  "log_every_steps",
  "checkpoint.every_epochs",
  "checkpoint.keep",
  "checkpoint.async_save",
  "checkpoint.snapshot_every_epochs",
  "checkpoint.snapshot_heads",
  "eval.batch_size",
  "eval.every_epochs",  # how often it is measured, not what is trained (the last epoch always is)
  "shuffle_buffer",
  "offline.at_init",
  "offline.at_init_scale_free",
  "offline.ridge_probe",
  "offline.standardize",
  "offline.num_epochs",
  "offline.batch_size",
  "offline.train_examples",
  "mesh.data",
  "mesh.model",
  "mesh.fsdp",
)


# ``blocks`` in a layer list: every sown layer but pre_logits, resolved against the model being built, so a
# config that means "every block" (the ViT configs' norm_layers) stays right when --config.model.depth or
# --config.model.variant changes the number of blocks.
LAYER_TOKENS = ("all", "blocks")


def named_layers(spec: str) -> list[str]:
  """The names a layer spec lists ('a,b'); [] for '' or a token (LAYER_TOKENS), which the model resolves."""
  spec = spec.strip()
  return [] if spec in LAYER_TOKENS else [s.strip() for s in spec.split(",") if s.strip()]


def parse_layers(spec: str, available: list[str], key: str) -> list[str]:
  """'all' | 'blocks' (all but pre_logits) | '' | 'a,b' -> validated list of names, in the model's order."""
  spec = spec.strip()
  if spec == "all":
    return list(available)
  if spec == "blocks":
    return [n for n in available if n != "pre_logits"]
  names = named_layers(spec)
  unknown = [n for n in names if n not in available]
  if unknown:
    where = "the model does not sow" if key != "rlp.reg_layers" else "config.rlp.layers does not measure"
    raise UserError(
      f"config.{key}={spec!r}: {where} {unknown}. Use some of {available}, 'all' or 'blocks'"
      + (
        " (a layer regularizes only if it also has a head: add it to rlp.layers)."
        if key == "rlp.reg_layers"
        else "."
      )
    )
  return [n for n in available if n in names]


POOLS = ("classifier", "mean", "mean_patches", "token", "flatten")


def feature_pool(config: ml_collections.ConfigDict) -> str:
  """``config.rlp.pool`` resolved for this model: 'mean', 'mean_patches', 'token' or 'flatten'.

  'classifier' pools a block's map the way the model's class head reads its last one, so a head on a block
  sees what a class head there would (docs/design.md §7): a ViT with a class token reads that token, every
  other model (CNN/WRN global average pooling, ViT 'gap') the mean over positions.
  """
  pool = config.rlp.pool
  class_token = model_registry.get(config.model.name).class_token(config.model)
  if pool == "classifier":
    return "token" if class_token else "mean"
  if pool in ("token", "mean_patches") and not class_token:
    raise UserError(
      f"config.rlp.pool: {pool!r} needs a ViT with a class token (model.name='vit', model.classifier="
      f"'token'), this model ({config.model.name}) has none; use 'classifier' or 'mean'."
    )
  return pool


def flatten(tree, prefix: str = "") -> dict:
  """A ConfigDict or nested dicts (a config's JSON) -> one dict with dotted keys: {"rlp.reg_lambda": 1e4}."""
  out = {}
  for key, value in tree.items():
    if hasattr(value, "items"):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks that need no data and no model; each error names the key and the fix."""

  def fail(key, msg):
    raise UserError(f"config.{key}: {msg}")

  def get(key):  # a dotted key's value: 'rlp.reg_lambda'
    value = config
    for part in key.split("."):
      value = value[part]
    return value

  def at_least(key, low, what=""):
    if not get(key) >= low:  # also refuses NaN
      fail(key, f"must be >= {low}{what}, got {get(key)}.")

  # A float that is NaN or infinite is no setting at all (and NaN is not valid JSON in config.json).
  for key, value in flatten(config).items():
    if isinstance(value, float) and not math.isfinite(value):
      fail(key, f"must be a finite number, got {value}.")
  at_least("num_epochs", 1)
  at_least("batch_size", 1)
  at_least("seed", 0, " (it keys the hash of every random label)")
  if config.seed > MAX_SEED:
    # The label hash takes 32-bit keys (data/labels.py): a larger seed would wrap onto another one.
    fail("seed", f"must be <= {MAX_SEED:,} (it keys the 32-bit label hash), got {config.seed:,}.")
  for key in ("eval.train_examples", "offline.train_examples"):
    value = get(key)
    if value == 0 or value < -1:
      fail(key, f"must be a number of examples >= 1, or -1 for all of them; got {value}.")
  for key in ("rlp.layers", "rlp.reg_layers", "rlp.norm_layers", "probes.layers"):
    names = named_layers(get(key))
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
      fail(key, f"lists {twice} more than once; name each layer once.")
  at_least("shuffle_buffer", 1)
  at_least("max_steps_per_epoch", 0, " (0 = whole epochs)")
  at_least("log_every_steps", 1)
  at_least("eval.every_epochs", 1)
  at_least("eval.batch_size", 1)
  at_least("offline.num_epochs", 1)
  at_least("offline.batch_size", 1)
  model = model_registry.get(config.model.name)
  # A ViT's width and depth of 0 take its variant's (models/vit.py): the full ViT configs rely on it.
  smallest, meaning = (0, " (0 = the variant's)") if model.size_from_variant else (1, "")
  at_least("model.width", smallest, meaning)
  at_least("model.depth", smallest, meaning)
  if config.rlp.reg_lambda > 0 and config.rlp.num_heads == 0:
    fail(
      "rlp.reg_lambda",
      f"is {config.rlp.reg_lambda} but config.rlp.num_heads=0: there is no head to regularize with. "
      "Set rlp.num_heads >= 1, or rlp.reg_lambda=0.",
    )
  if config.rlp.label_mode != "unique" and config.rlp.num_labels > MAX_LABELS:
    fail(
      "rlp.num_labels",
      f"must be <= {MAX_LABELS:,} (labels are int32 and hashed to 32 bits), got {config.rlp.num_labels:,}; "
      "for one label per example use rlp.label_mode='unique'.",
    )
  if config.checkpoint.every_epochs < 1:
    fail(
      "checkpoint.every_epochs",
      f"must be >= 1 (epochs between resume checkpoints), got {config.checkpoint.every_epochs}.",
    )
  if config.checkpoint.keep < 1:
    fail("checkpoint.keep", f"must be >= 1 (resume checkpoints kept), got {config.checkpoint.keep}.")
  if config.checkpoint.snapshot_every_epochs < 0:
    fail(
      "checkpoint.snapshot_every_epochs",
      "must be >= 0 (0 = snapshots at the first and last step only), "
      f"got {config.checkpoint.snapshot_every_epochs}.",
    )
  if config.rlp.reg_lambda < 0:
    fail("rlp.reg_lambda", f"must be >= 0 (λ = 0 measures only), got {config.rlp.reg_lambda}.")
  if config.rlp.num_heads < 0:
    fail("rlp.num_heads", f"must be >= 0 (0 = no RLP heads), got {config.rlp.num_heads}.")
  if config.rlp.reg_normalization not in REG_NORMALIZATIONS:
    fail(
      "rlp.reg_normalization",
      f"must be one of {REG_NORMALIZATIONS} ('paper': λ multiplies Eq. 4's -log(1 - p̂)/n), "
      f"got {config.rlp.reg_normalization!r}.",
    )
  if config.rlp.label_mode not in LABEL_MODES:
    fail("rlp.label_mode", f"must be one of {LABEL_MODES}, got {config.rlp.label_mode!r}.")
  if config.rlp.num_heads and config.rlp.label_mode != "unique" and config.rlp.num_labels < 2:
    fail("rlp.num_labels", f"must be >= 2 (a head needs two labels to predict), got {config.rlp.num_labels}.")
  if config.rlp.hidden_dim < 0:
    fail("rlp.hidden_dim", f"must be >= 0 (0 = linear head), got {config.rlp.hidden_dim}.")
  if config.model.dtype not in ("float32", "bfloat16"):
    fail("model.dtype", f"must be 'float32' or 'bfloat16', got {config.model.dtype!r}.")
  if config.rlp.dtype not in ("float32", "bfloat16"):
    fail("rlp.dtype", f"must be 'float32' or 'bfloat16', got {config.rlp.dtype!r}.")
  if config.rlp.label_chunk < 0:
    fail("rlp.label_chunk", f"must be >= 0 (0 = full logits), got {config.rlp.label_chunk}.")
  if config.rlp.loss_kernel not in ("xla", "pallas"):
    fail("rlp.loss_kernel", f"must be 'xla' or 'pallas', got {config.rlp.loss_kernel!r}.")
  if config.rlp.loss_kernel == "pallas" and config.mesh.model != 1:
    # Refused here, before a workdir exists; head_loss.head_stats refuses the pair again for direct callers.
    fail(
      "rlp.loss_kernel",
      f"'pallas' runs on one label shard, but mesh.model is {config.mesh.model}; "
      "use rlp.loss_kernel='xla' or mesh.model=1.",
    )
  if config.rlp.pool not in POOLS:
    fail("rlp.pool", f"must be one of {POOLS}, got {config.rlp.pool!r}.")
  feature_pool(config)
  if config.model.get("features_after_dropout", False) and not model.sows_after_dropout:
    fail(
      "model.features_after_dropout",
      f"only the MLP and the CNN drop out the features they sow ({config.model.name} drops out inside its "
      "blocks); set it to False.",
    )
  if not 0.0 <= config.label_noise < 1.0:
    fail("label_noise", f"must lie in [0, 1), got {config.label_noise}.")
  if not 0.0 < config.dataset_fraction <= 1.0:
    fail("dataset_fraction", f"must lie in (0, 1], got {config.dataset_fraction}.")
  if not 0.0 <= config.label_smoothing < 1.0:
    fail("label_smoothing", f"must lie in [0, 1), got {config.label_smoothing}.")
  if not 0.0 <= config.model.dropout < 1.0:
    fail("model.dropout", f"must lie in [0, 1), got {config.model.dropout}.")
  for key in ("optimizer", "rlp.optimizer", "probes.optimizer"):
    opt = get(key)
    if opt.name not in OPTIMIZERS:
      fail(f"{key}.name", f"must be one of {OPTIMIZERS}, got {opt.name!r}.")
    if opt.schedule not in ("cosine", "constant"):
      fail(f"{key}.schedule", f"must be 'cosine' or 'constant', got {opt.schedule!r}.")
    if opt.warmup_epochs < 0:
      fail(f"{key}.warmup_epochs", f"must be >= 0, got {opt.warmup_epochs}.")
    if not opt.learning_rate > 0:
      fail(f"{key}.learning_rate", f"must be > 0, got {opt.learning_rate}.")
    if not opt.weight_decay >= 0:
      fail(f"{key}.weight_decay", f"must be >= 0, got {opt.weight_decay}.")
