r"""ViT-S/4 on CIFAR-100 (Appendix A.3): is the regularizer's CIFAR-100 effect due to the data or the model?

  python -m rlp_jax.main --config=configs/vit_cifar100.py --workdir=$WORKDIR

The paper gives no recipe for this run beyond the model. Ours: recipe 2's optimizer (AdamW, lr 1e-3, b2 0.999,
8-epoch linear warm-up then cosine, weight decay 0.1 on kernels, gradient clipping at norm 1.0, bf16 matmuls)
with recipe 1's data settings (CIFAR-100 at its native 32x32, batch 256, 200 epochs, n = 10,000), random
horizontal flips as in recipe 2 (``:no_flip`` turns them off, as recipe 1 has no augmentation), pixels in
[-1, 1]. ViT-S/4: width 384, 12 blocks of 6 heads, 4x4 patches -> 64 tokens + the class token. One RLP head
(one dense layer) on ``pre_logits``; heads on blocks are LayerNorm + dense on the class token (Fig. 2C);
λ = 0.

Args (comma-separated): ``all_blocks``, ``reg_last``, ``reg_all``, ``reg_block8``, ``probes``, ``shuffled``,
``unique``, ``two_layer``, ``multihead`` and ``runlocal`` as in configs/vit_imagenet.py (there on ImageNet:
heads on every block, which of them regularize, class probes, label modes, head variants, a CPU-sized smoke
test); ``no_flip`` trains without augmentation.

Fig. A.2 is the λ sweep: ``--config.rlp.reg_lambda=L`` for L in 0, 1e-2, 1e-1, 1, 10, 100 (memorization stops
for λ > 1e-1 in the paper), in the paper's convention (``rlp.reg_normalization='paper'``: λ multiplies
Eq. 4's -log(1 - p̂)/n, n = 10,000). The README maps every figure to its command.
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
  "no_flip",
  "runlocal",
)


def get_config(arg: str = ""):
  args = config_args.parse(arg, ARGS, "configs/vit_cifar100.py")
  c = configuration.base_config()
  c.dataset = "cifar100"
  c.num_epochs = 200
  c.batch_size = 256
  c.model.update(name="vit", variant="S", patch_size=4, width=0, depth=0, num_heads=0, dropout=0.0)
  c.model.update(dtype="bfloat16", classifier="token")
  c.rlp.dtype = "bfloat16"  # the heads' matmuls too (float32 accumulation, logits and losses)
  c.optimizer = configuration.optimizer_config(
    "adamw", 1e-3, warmup_epochs=8.0, weight_decay=0.1, grad_clip_norm=1.0
  )
  c.augment.update(flip="no_flip" not in args, crop="none", image_size=0, normalize="symmetric")
  c.rlp.update(num_heads=1, num_labels=10_000, layers="pre_logits", reg_layers="all")
  # λ multiplies the paper's Eq. 4 with its 1/n (docs/design.md §7), one convention for every paper
  # config: at n = 10,000, λ = 100 weighs the per-example penalty by 0.01.
  c.rlp.reg_normalization = "paper"
  # Every 5 epochs (40 points over 200 epochs, the last always): each evaluation reads 10,000 training and
  # 10,000 test images, which every epoch would be 11-12% of the run's FLOPs; every 5, under 3%
  # (python -m rlp_jax.plan prints the share).
  c.eval.update(batch_size=1024, train_examples=10_000, every_epochs=5)
  c.offline.update(batch_size=256)
  c.checkpoint.every_epochs = 1
  c.log_every_steps = 100
  if "runlocal" in args:
    c.model.update(width=32, depth=2, num_heads=2, patch_size=8)
  # After runlocal shrank the model: the args name its blocks.
  config_args.apply_figure_args(c, args, vit.block_names(c.model), "blocks")
  # The paper's heads (docs/design.md §7): one dense layer on pre_logits (the default head; those features are
  # already layer-normed), LayerNorm + dense on a block (Fig. 2C), reading the class token (rlp.pool).
  # 'blocks', not their names: resolved against the model built, so --config.model.depth/variant keep it.
  c.rlp.norm_layers = "blocks"
  if "runlocal" in args:
    config_args.shrink_for_runlocal(c)
  return c
