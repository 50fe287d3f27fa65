r"""The paper's findings, small, on the embedded digits (docs/results.md): four studies, 19 runs.

  python -m rlp_jax.reproduce --config=configs/paper_digits.py --workdir=/tmp/rlp_paper_digits \
      --out=docs/results

runs these studies (``python -m rlp_jax.sweep --config=configs/paper_digits.py --workdir=ROOT`` alone
trains them), the offline heads of Fig. 2B on the λ = 0 runs, the per-example scores of the label-noise
runs, and writes docs/results/ (figures and tables). Every run is the digits demo's CNN
(configs/digits.py) for ``EPOCHS`` epochs (half the demo's), so that the whole reproduction fits about 15
minutes on 2 CPU cores (each run costs ~25 s of compilation and set-up besides its epochs, so runs, not
epochs, are what is scarce):

  Fig. 2A/2B  λ = 0, seeds {0, 1, 2} (online head, offline heads on every snapshot, the step-0 control)
  Figs. 4/5   λ ∈ {0, 10, 100} × seeds {0, 1, 2}
  Fig. 7C     label_noise = 0.2, λ ∈ {0, 10} × seeds {0, 1, 2}; 4 heads per layer (4 label draws) so the
              per-example scores can be averaged over heads (A.8)
  A.2         label_mode = shuffled, λ = 0, seed 0
  A.9         width ∈ {8, 16, 32, 64} (32 is the λ = 0, seed 0 run), λ = 0, seed 0

Args: ``quick`` shrinks every run to 2 epochs (a dry run of the whole pipeline in a few minutes).
"""

from rlp_jax.infra import config_args
from rlp_jax.infra.studies import LAMBDA, Study

EPOCHS = 15
LAMBDAS = (0.0, 10.0, 100.0)
NOISE_HEADS = 4
WIDTHS = (8, 16, 32, 64)

STUDIES = (
  Study("fig4_5_lambda", "Figs. 4/5: λ lowers random-label accuracy; test accuracy?", LAMBDA, LAMBDAS),
  Study(
    "fig7c_noise",
    "Fig. 7C: λ under 20% label noise (4 heads per layer)",
    "label_noise",
    (0.2,),
    (0.0, 10.0),
    fixed=(("rlp.num_heads", NOISE_HEADS),),
  ),
  Study(
    "a2_shuffled", "A.2: shuffled labels stay at chance", "rlp.label_mode", ("fixed", "shuffled"), seeds=(0,)
  ),
  Study("a9_width", "A.9: width", "model.width", WIDTHS, seeds=(0,)),
)


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
  # The step-0 control is fitted once per base run, by rlp_jax.offline (all its snapshots).
  config.offline.at_init = False
  return config


def get_studies(arg: str = ""):
  del arg  # the same runs, however long
  return STUDIES


def get_sweep(arg: str = ""):
  from rlp_jax.infra import studies

  return studies.points(get_config(arg), get_studies(arg))
