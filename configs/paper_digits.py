r"""The paper's findings, small, on the embedded digits (docs/results.md): one sweep of 19 runs.

  python -m rlp_jax.reproduce --config=configs/paper_digits.py --workdir=/tmp/rlp_paper_digits \
      --out=docs/results

runs this sweep (``python -m rlp_jax.sweep --config=configs/paper_digits.py --workdir=ROOT`` alone trains
it), the offline heads of Fig. 2B on the λ = 0 run, the per-example scores of the label-noise runs, and
writes docs/results/ (figures and tables). Every run is the digits demo's CNN (configs/digits.py) for
``EPOCHS`` epochs (half the demo's), so that the whole reproduction fits about 15 minutes on 2 CPU cores
(each run costs ~25 s of compilation and set-up besides its epochs, so runs, not epochs, are what is
scarce):

  Fig. 2A/2B  λ = 0, seed 0 (online head, offline heads on every snapshot, the step-0 control)
  Figs. 4/5   λ ∈ {0, 10, 100} × seeds {0, 1, 2}
  Fig. 7C     label_noise = 0.2, λ ∈ {0, 10} × seeds {0, 1, 2}; 4 heads per layer (4 label draws) so the
              per-example scores can be averaged over heads (A.8)
  A.2         label_mode = shuffled, λ = 0, seed 0
  A.9         width ∈ {8, 16, 64} (32 is the λ = 0, seed 0 run), λ = 0, seed 0

Args: ``quick`` shrinks every run to 2 epochs (a dry run of the whole pipeline in a few minutes).
"""

from rlp_jax.infra import config_args

EPOCHS = 15
LAMBDAS = (0.0, 10.0, 100.0)
SEEDS = (0, 1, 2)
NOISE_LAMBDAS = (0.0, 10.0)
NOISE = 0.2
NOISE_HEADS = 4
WIDTHS = (8, 16, 64)


def _digits():
  # Loaded by path, as config files are (configs/ is not a package the commands import).
  import os

  return config_args.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits.py"))


def get_config(arg: str = ""):
  args = config_args.parse(arg, ("quick",), "configs/paper_digits.py")
  config = _digits()
  config.num_epochs = 2 if "quick" in args else EPOCHS
  config.offline.num_epochs = config.num_epochs  # the online heads' budget (configs/digits.py)
  config.checkpoint.snapshot_every_epochs = 1 if "quick" in args else 5
  # The step-0 control is fitted once, on the Fig. 2B run, by rlp_jax.offline (all its snapshots).
  config.offline.at_init = False
  return config


def get_sweep(arg: str = ""):
  del arg  # the same runs, however long
  lam, seed = "rlp.reg_lambda", "seed"
  points = [{lam: v, seed: s} for v in LAMBDAS for s in SEEDS]
  points += [
    {"label_noise": NOISE, "rlp.num_heads": NOISE_HEADS, lam: v, seed: s}
    for v in NOISE_LAMBDAS
    for s in SEEDS
  ]
  points.append({"rlp.label_mode": "shuffled"})
  points += [{"model.width": w} for w in WIDTHS]
  return points
