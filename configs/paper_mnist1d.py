r"""The paper's experiments on the embedded mnist1d (docs/results.md): an MLP far from a saturated test set.

  python -m rlp_jax.reproduce --config=configs/paper_mnist1d.py --workdir=/tmp/rlp_paper_mnist1d \
      --out=docs/results/mnist1d

runs every study below (``STUDIES``; ``python -m rlp_jax.sweep --config=configs/paper_mnist1d.py
--workdir=ROOT`` alone trains them), the offline heads and converged probes of Fig. 2B on every snapshot of
the λ = 0 runs, the per-example scores of the label-noise runs, and writes the figures and tables.

Why this setting: digits saturates (test accuracy 0.99 on 360 examples), so effects on test accuracy were
within noise there. mnist1d/4k (4000 training and 1000 test signals of length 40, 10 classes) with a
2-layer MLP of width 256 fits every training label, noisy ones included, and tests at about 0.69: a
test-accuracy effect of 3 points is resolvable. Every run lasts ``EPOCHS`` epochs; the clean labels are
fitted by epoch 20. λ is per example (``rlp.reg_normalization='per_example'``; the paper's λ = n × this).

Args: ``quick`` shrinks every run to 2 epochs of 4 steps and keeps four studies (``QUICK``), each at one
seed and two values: the suite's smoke run of every stage of the pipeline (7 runs).
"""

from rlp_jax.infra import config_args, configuration
from rlp_jax.infra.studies import LAMBDA, Study

EPOCHS = 30
NUM_LABELS = 100
LAMBDAS = (0.0, 1.0, 10.0, 100.0)
STRONG = 10.0  # the λ the controls are run at: it halves random-label accuracy without collapsing training

STUDIES = (
  Study("fig4_5_lambda", "Figs. 4/5: λ lowers random-label accuracy; test accuracy?", LAMBDA, LAMBDAS),
  Study("fig7c_noise", "Fig. 7C: λ under label noise", "label_noise", (0.0, 0.2, 0.4), (0.0, STRONG)),
  Study(
    "a1_shuffled",
    "A.1: random labels reshuffled every epoch (cannot be learned) × λ",
    "rlp.label_mode",
    ("fixed", "shuffled"),
    (0.0, STRONG),
  ),
  Study("fig3_dropout", "Fig. 3A: dropout lowers random-label accuracy", "model.dropout", (0.0, 0.3)),
  Study(
    "fig3_weight_decay",
    "Fig. 3B: weight decay lowers random-label accuracy",
    "optimizer.weight_decay",
    (0.0, 1e-3),
  ),
  Study("fig3_label_smoothing", "Fig. 3C: label smoothing", "label_smoothing", (0.0, 0.2)),
  Study("a3_num_labels", "A.3: the number of random labels n", "rlp.num_labels", (10, 100, 1000)),
  Study(
    "a6_hidden",
    "A.5/A.6: a hidden layer in the head at n = 10",
    "rlp.hidden_dim",
    (0, 256),
    fixed=(("rlp.num_labels", 10),),
  ),
  Study("a7_dataset_size", "A.7: dataset size at fixed n", "dataset_fraction", (0.25, 0.5, 1.0)),
  Study("a8_multi_head", "A.8: parallel heads × λ", "rlp.num_heads", (1, 4), (0.0, STRONG)),
  Study("a9_width", "A.9: network width", "model.width", (64, 128, 256, 512)),
)


def get_config(arg: str = ""):
  args = config_args.parse(arg, ("quick",), "configs/paper_mnist1d.py")
  config = configuration.base_config()
  config.dataset = "mnist1d/4k"
  config.batch_size = 128
  config.optimizer = configuration.optimizer_config("sgd", 0.1, warmup_epochs=1.0)
  config.model.update(name="mlp", width=256, depth=2)
  config.num_epochs = 2 if "quick" in args else EPOCHS
  config.max_steps_per_epoch = 4 if "quick" in args else 0
  config.rlp.num_labels = NUM_LABELS
  config.rlp.layers = "block_1,pre_logits"
  config.rlp.optimizer.learning_rate = 1e-2  # the heads track the features within the run (configs/digits.py)
  # Train metrics on every training example; evaluation every 5 epochs (the runs, not epochs, are scarce).
  config.eval.train_examples = -1
  config.eval.every_epochs = 1 if "quick" in args else 5
  # The plain control gets the online heads' budget; the converged probe is blind to scale and budget.
  config.offline.update(num_epochs=config.num_epochs, batch_size=config.batch_size, ridge_probe=True)
  # The step-0 control is fitted on the Fig. 2B runs by rlp_jax.offline (all their snapshots), not per run.
  config.offline.at_init = False
  config.log_every_steps = 100
  every = 1 if "quick" in args else 10
  config.checkpoint.update(every_epochs=every, snapshot_every_epochs=every, snapshot_heads=True)
  return config


# ``quick``: a study of each kind the pipeline treats differently (the λ axis, label noise with its
# per-example scores, chance levels that differ along the axis, fixed keys beside the axis).
QUICK = ("fig4_5_lambda", "fig7c_noise", "a3_num_labels", "a6_hidden")


def get_studies(arg: str = ""):
  """The studies; ``quick`` keeps ``QUICK``, each at its first seed and first two values (a smoke run)."""
  if "quick" in config_args.parse(arg, ("quick",), "configs/paper_mnist1d.py"):
    import dataclasses

    chosen = [s for s in STUDIES if s.name in QUICK]
    return tuple(dataclasses.replace(s, values=s.values[:2], seeds=s.seeds[:1]) for s in chosen)
  return STUDIES


def get_sweep(arg: str = ""):
  from rlp_jax.infra import studies

  return studies.points(get_config(arg), get_studies(arg))
