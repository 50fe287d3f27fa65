r"""WRN-16-4 on CIFAR-100: the paper's recipe 1 (Appendix A.1) and every CIFAR-100 WRN figure.

  python -m rlp_jax.main --config=configs/wrn_cifar100.py --workdir=$WORKDIR

Recipe 1: WRN-16-4 (2.77M parameters), SGD with momentum 0.9, lr 0.5 with a 1-epoch linear warm-up then
cosine decay to 0, batch 256, 200 epochs, no data augmentation and no regularization (dropout, weight decay
and label smoothing all 0); n = 10,000 random labels, one linear RLP head on ``pre_logits`` (the 256
globally pooled features the class head reads); λ = 0. Images: tfds ``cifar100`` (downloads on first use),
standardized with the CIFAR-100 per-channel mean/std (preprocessing, not augmentation).

Args (comma-separated: ``--config=configs/wrn_cifar100.py:all_blocks,probes``):
  all_blocks  heads on every sown layer: the groups ``block_1..block_3`` (mean-pooled) and ``pre_logits``
  reg_last    heads on every layer, only ``pre_logits``' regularizes
  probes      a linear class probe on every layer
  shuffled    new random labels every epoch (A.2's sanity check)
  unique      one label per example, n = m = 50,000 (A.5)
  two_layer   head with one hidden layer of d_h = 1024 and n = 10 (A.6; sweep ``--config.rlp.hidden_dim``)
  multihead   10 parallel heads, each with its own labels (A.8)
  flip        random horizontal flips (not in recipe 1)
  runlocal    WRN-10-1, batch 8, 2 steps per epoch, n <= 100: a CPU smoke test of any combination above on
              whatever data ``--config.data_dir`` holds (the tests run it on tfds mock data)

Figures with this config (the README has the exact commands): Fig. 3 (``--config.model.dropout``,
``--config.optimizer.weight_decay``, ``--config.label_smoothing`` sweeps), Fig. 5 (λ sweep,
``--config.rlp.reg_lambda``, in the paper's convention ``rlp.reg_normalization='paper'``: λ multiplies
Eq. 4's -log(1 - p̂)/n), A.3A (n sweep, ``--config.rlp.num_labels``), A.6 (``:two_layer`` with
``--config.rlp.num_labels=100``, ``--config.rlp.hidden_dim`` and λ), A.7 (``--config.rlp.num_labels=1024``
with ``--config.dataset_fraction``), A.9 (width sweep, ``--config.model.width``).
"""

from rlp_jax.infra import config_args, configuration

ARGS = (
  "all_blocks",
  "reg_last",
  "probes",
  "shuffled",
  "unique",
  "two_layer",
  "multihead",
  "flip",
  "runlocal",
)


def get_config(arg: str = ""):
  args = config_args.parse(arg, ARGS, "configs/wrn_cifar100.py")
  c = configuration.base_config()
  c.dataset = "cifar100"
  c.num_epochs = 200
  c.batch_size = 256
  c.model.update(name="wrn", depth=16, width=4, dropout=0.0)
  c.optimizer = configuration.optimizer_config("sgd", 0.5, momentum=0.9, warmup_epochs=1.0)
  c.augment.update(flip="flip" in args, crop="none", image_size=0, normalize="cifar100")
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
    c.model.update(depth=10, width=1)
  # A WRN sows one block per group (3 groups at any depth) and pre_logits.
  config_args.apply_figure_args(c, args, ["block_1", "block_2", "block_3", "pre_logits"], "all")
  if "runlocal" in args:
    config_args.shrink_for_runlocal(c)
  return c
