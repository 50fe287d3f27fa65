r"""scikit-learn digits (embedded, offline): an MLP with an RLP head on its penultimate features.

The README's demo. Trains in about a minute on a 2-core CPU and prints, per RLP head, the random-label
accuracy beside chance and beside the same head trained offline on the frozen network at initialization.

  python -m rlp_jax.main --config=configs/digits.py --workdir=/tmp/rlp_digits

Args (``--config=configs/digits.py:ARG``): ``cnn`` uses the small CNN instead of the MLP; ``tiny`` shrinks
everything to a few steps (what the tests run).
"""

from rlp_jax import configuration


def get_config(arg: str = ""):
  config = configuration.base_config()
  config.dataset = "digits"
  config.num_epochs = 60
  config.batch_size = 64
  config.model.name = "mlp"
  config.model.width = 512
  config.model.depth = 2
  config.optimizer = configuration.optimizer_config("sgd", 0.1, warmup_epochs=1.0)
  config.rlp.num_heads = 1
  config.rlp.num_labels = 10
  config.rlp.layers = "block_1,pre_logits"
  config.probes.layers = "all"
  config.log_every_steps = 100
  config.checkpoint_every_epochs = 10
  config.offline.num_epochs = 60

  args = [a for a in arg.split(",") if a]
  if "cnn" in args:
    config.model.name = "cnn"
    config.model.width = 32
  if "tiny" in args:
    config.num_epochs = 2
    config.model.width = 16
    config.offline.num_epochs = 2
    config.checkpoint_every_epochs = 1
    config.log_every_steps = 5
  return config
