r"""scikit-learn digits (embedded, offline): a small CNN with RLP heads on block_1 and pre_logits.

The README's demo. Trains in about a minute on an idle 2-core CPU (30 epochs) and prints, per RLP head, the
random-label accuracy beside chance, beside a head trained offline on the frozen network at initialization
(the plain control), and beside the converged probe (a closed-form fit of the random labels on
standardized features, blind to their scale and to a step budget) on the initial and the trained network:

  python -m rlp_jax.main --config=configs/digits.py --workdir=/tmp/rlp_digits

What it shows, seeds 0-2 (mean [95% interval], docs/results.md): with n = 200 random labels (about 7
training examples per label) the ``pre_logits`` head of the trained CNN predicts 0.145 [0.088, 0.202] of
them, 29x chance (0.005) and 7x the plain control (0.022 [0.016, 0.027]), at class test accuracy 0.988. The
plain control gets the online head's budget (same optimizer, epochs and batch size); the pooled features
grow ~15x in norm during training, and a linear head with a fixed budget reaches further on larger
features. The converged probe removes both: it fits 0.412 [0.398, 0.426] of the labels from the initial
features and 0.223 [0.122, 0.324] from the trained ones, lower on every seed (``block_1``: 0.173 vs 0.088).
So here the online head's lead over the plain control is the features' scale and the head's budget, not
example-specific content the initial features lack (docs/design.md §4).

Why these settings: a CNN's globally pooled features at initialization are small, so the plain control is
near chance; an MLP's random ReLU features of the pixels already let a linear head fit random labels
better than its trained, class-collapsed features do (with ``mlp``: pre_logits online 0.64 vs offline @
init 0.85). A large n keeps a linear head from fitting random labels from generic features, and the heads'
Adam lr 1e-2 (rather than 1e-3) lets them track the features within 30 epochs.
If you override ``num_epochs`` or ``batch_size``, override ``offline.num_epochs`` / ``offline.batch_size``
too to keep the budgets equal.

Args (``--config=configs/digits.py:ARG``): ``mlp`` uses the MLP (width 512) instead of the CNN; ``cnn``
is accepted for compatibility (the CNN is the default); ``tiny`` shrinks everything to a few steps (what
the tests run: an MLP, or the CNN with ``cnn,tiny``).
"""

from rlp_jax.infra import config_args, configuration


def get_config(arg: str = ""):
  args = sorted(config_args.parse(arg, ("mlp", "cnn", "tiny"), "configs/digits.py"))
  config = configuration.base_config()
  config.dataset = "digits"
  config.batch_size = 64
  config.optimizer = configuration.optimizer_config("sgd", 0.1, warmup_epochs=1.0)
  config.rlp.num_heads = 1
  config.rlp.layers = "block_1,pre_logits"
  config.probes.layers = "all"

  if "tiny" in args:
    # The tests' config (unchanged): an MLP (or the CNN with ``cnn``), n = 10, a few steps.
    config.num_epochs = 2
    config.model.name = "cnn" if "cnn" in args else "mlp"
    config.model.width = 16
    config.model.depth = 2
    config.rlp.num_labels = 10
    config.offline.num_epochs = 2
    config.checkpoint.every_epochs = 1
    config.log_every_steps = 5
    return config

  config.num_epochs = 30
  if "mlp" in args:
    config.model.name = "mlp"
    config.model.width = 512
  else:
    config.model.name = "cnn"
    config.model.width = 32
  config.model.depth = 2
  config.rlp.num_labels = 200
  config.rlp.optimizer.learning_rate = 1e-2
  config.offline.num_epochs = config.num_epochs  # the online heads' budget: same epochs ...
  config.offline.batch_size = config.batch_size  # ... and batch size, so the same number of steps
  # The converged probe at init and on the trained network (closed form, blind to scale and budget).
  config.offline.ridge_probe = True
  config.log_every_steps = 100
  # Resume state every 10 epochs; a snapshot of the backbone and the online heads every 5 (kilobytes here):
  # offline heads (Fig. 2B) and per-example memorization scores read them.
  config.checkpoint.update(every_epochs=10, snapshot_every_epochs=5, snapshot_heads=True)
  return config
