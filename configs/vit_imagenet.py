r"""ViT-B/32 on ImageNet-1k: the paper's recipe 2 (Appendix A.1) and every ImageNet figure.

  python -m rlp_jax.main --config=configs/vit_imagenet.py --workdir=$WORKDIR

Recipe 2: ViT-B/32 (class token, learned position embedding), AdamW (b1 0.9, b2 0.999) with lr 1e-3, an
8-epoch linear warm-up then cosine decay to 0, weight decay 0.1 (kernels only), gradient clipping at global
norm 1.0, batch 1024, 90 epochs, bf16 matmuls with float32 parameters and losses; n = 100,000 random labels,
one RLP head (a single dense layer, the paper's default) on ``pre_logits``; λ = 0 (pure measurement). Heads
on blocks (the args below) are LayerNorm + dense on the class token, as in Fig. 2C (``rlp.norm_layers``,
``rlp.pool``).

Data: tfds ``imagenet2012`` (manual download: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
``<data_dir>/downloads/manual``; the first run prepares it), evaluated on ``validation``. Train: Inception
random-resized crop to 224 (5-100% of the area, aspect 3/4-4/3) and random horizontal flip; eval: resize the
shorter side to 256, central 224 crop; pixels scaled to [-1, 1] (big_vision's ViT preprocessing). The paper
names only "flipping augmentation"; ``:flip_only`` drops the random crop (train = eval transform + flip).
The 50,000-example shuffle buffer holds encoded JPEGs (~5.5 GB of host memory per host); shard files are
shuffled too (seeded per epoch).

Cost, measured on one H200 (synthetic data, batch 1024, bf16): 81 ms per step (12.6k images/s) without
heads; the ``pre_logits`` head with n = 100,000 adds 3.4% (4.7% with λ > 0); ``all_blocks`` (12 heads,
923M head parameters) adds 44%. float32 matmuls take 2.1x as long. ``unique`` (n = m, a 985M-parameter
head) computes the head's losses 32,768 labels at a time (``rlp.label_chunk``): compiled for one device it
needs 74 GB (89 GB with full logits, ``--config.rlp.label_chunk=0``) and 1.31x the FLOPs of the step
without heads, at λ = 0 and λ > 0 alike (full logits: 1.23x). Its step time was measured on an H200 only
before the head losses got their hand-written VJP (rlp_jax/heads/head_loss.py): +64% measuring, +77%
regularizing, with full logits; not re-measured since.

Args (comma-separated: ``--config=configs/vit_imagenet.py:all_blocks,reg_last``):
  all_blocks  one head on every transformer block ``block_01 .. block_12`` (Fig. 2C)
  reg_last    heads on every block, only ``block_12``'s regularizes (Fig. 8A, Fig. 9 with ``probes``)
  reg_all     heads on every block, all of them regularize (Fig. 8B/C)
  reg_block8  heads on every block, only ``block_08``'s regularizes (A.10)
  probes      a linear class probe on every block (Fig. 9)
  shuffled    new random labels every epoch (A.2 sanity check)
  unique      one label per example, n = m = 1,281,167 (A.5; the head alone has ~1B parameters)
  two_layer   head with one hidden layer of d_h = 1024 and n = 10 (A.6; sweep ``--config.rlp.hidden_dim``)
  multihead   10 parallel heads, each with its own labels (A.8; sweep ``--config.rlp.num_heads``)
  flip_only   no random crop: the literal "flip only" reading of recipe 2
  runlocal    a tiny ViT (width 32, 2 blocks, 32x32 inputs), batch 8, 2 steps per epoch, n <= 100: a CPU
              smoke test of any combination above on whatever data ``--config.data_dir`` holds (the tests
              run it on fake tfds data); block numbers beyond its depth map to its last block

The λ sweeps (Fig. 4, 7, 8, A.1, A.4, A.8, A.10) add ``--config.rlp.reg_lambda=L``, in the paper's
convention (``rlp.reg_normalization='paper'``: λ multiplies Eq. 4's -log(1 - p̂)/n, so L = 1e4 weighs the
per-example penalty by 1e4 / n = 0.1); Fig. 7 adds
``--config.dataset_fraction=F`` or ``--config.label_noise=P``; A.4 ``--config.rlp.num_labels=N``. The README
maps every figure to its command. Offline heads (Fig. 2B): ``python -m rlp_jax.offline --workdir=$WORKDIR``.
"""

from rlp_jax.infra import config_args, configuration
from rlp_jax.models import vit

ARGS = (
  "all_blocks",
  "reg_last",
  "reg_all",
  "reg_block8",
  "probes",
  "shuffled",
  "unique",
  "two_layer",
  "multihead",
  "flip_only",
  "runlocal",
)


def get_config(arg: str = ""):
  args = config_args.parse(arg, ARGS, "configs/vit_imagenet.py")
  c = configuration.base_config()
  c.dataset = "imagenet2012"
  c.num_epochs = 90
  c.batch_size = 1024
  c.model.update(name="vit", variant="B", patch_size=32, width=0, depth=0, num_heads=0, dropout=0.0)
  c.model.update(dtype="bfloat16", classifier="token")
  c.rlp.dtype = "bfloat16"  # the heads' matmuls too (float32 accumulation, logits and losses)
  c.optimizer = configuration.optimizer_config(
    "adamw", 1e-3, warmup_epochs=8.0, weight_decay=0.1, grad_clip_norm=1.0
  )
  c.augment.update(flip=True, crop="inception", image_size=224, eval_resize=256, normalize="symmetric")
  if "flip_only" in args:
    c.augment.crop = "none"
  c.rlp.update(num_heads=1, num_labels=100_000, layers="pre_logits", reg_layers="all")
  # λ multiplies the paper's Eq. 4 with its 1/n (docs/design.md §7), so the paper's λ values mean what they
  # meant there: λ = 1e4 at n = 100k is a per-example weight of 0.1.
  c.rlp.reg_normalization = "paper"
  c.eval.update(batch_size=1024, test_split="validation", train_examples=10_000)
  # Offline heads (Fig. 2B) run as their own command over all snapshots; a fixed 100k-example subset
  # and 20 epochs per checkpoint keep that affordable. No offline run at the end of training.
  c.offline.update(at_init=False, num_epochs=20, batch_size=1024, train_examples=100_000)
  # Resume state every epoch, the last 2 kept; a backbone snapshot (no optimizer state, no 1B-parameter
  # unique head) every epoch for the offline heads of Fig. 2B: ~36 GB per run (`python -m rlp_jax.plan`).
  c.checkpoint.update(every_epochs=1, keep=2, snapshot_every_epochs=1, snapshot_heads=False)
  c.log_every_steps = 100
  if "runlocal" in args:
    c.model.update(width=32, depth=2, num_heads=2, patch_size=8)
    c.augment.update(image_size=32, eval_resize=36)
  # After runlocal shrank the model: the args name its blocks.
  config_args.apply_figure_args(c, args, vit.block_names(c.model), "blocks")
  # The paper's heads (docs/design.md §7): one dense layer on pre_logits (the default head; those features are
  # already layer-normed), LayerNorm + dense on a block (Fig. 2C), reading the class token (rlp.pool).
  # 'blocks', not their names: resolved against the model built, so --config.model.depth/variant keep it.
  c.rlp.norm_layers = "blocks"
  if "unique" in args and "runlocal" not in args:
    # 1024 x 1.28M logits: computed 32,768 labels at a time, the step fits one 80 GB device (compiled
    # memory 74 GB, 89 GB with full logits) for one more head matmul. 0 restores full logits.
    c.rlp.label_chunk = 32_768
  if "runlocal" in args:
    config_args.shrink_for_runlocal(c)
  return c
