"""Bad command lines, for every command: one line ``error: ...`` naming what is wrong, exit status 2, no
traceback, and nothing written (docs/design.md §6).

Each command line runs as ``python -m rlp_jax.<command>`` would, in a child forked from one process that
has imported every command once (tests/cli_driver.py): 50 separate Python starts would cost minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_driver import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
TINY = "--config=configs/digits.py:tiny"

# (command, argv, what the error line must name). NEW is a workdir that must not exist afterwards; RUN is a
# trained run (a copy of the analysis fixture), which must be left as it was; DATA is the tfds data_dir.
CASES = [
  # main: the config file and its arg
  ("main", ["--config=configs/nope.py", "--workdir=NEW"], "--config"),
  ("main", ["--config=configs/digits.py:foo", "--workdir=NEW"], "unknown arg(s) ['foo']"),
  ("main", ["--workdir=NEW"], "--config is required"),
  # main: the workdir
  ("main", [TINY], "--workdir is required"),
  ("main", [TINY, "--workdir="], "--workdir is empty"),
  ("main", [TINY, "--workdir=FILE"], "is a file, not a directory"),
  (
    "main",
    [TINY, "--workdir=RUN", "--config.data_dir=DATA", "--config.rlp.reg_lambda=5"],
    "different experiment",
  ),
  # main: keys, types, structure
  ("main", [TINY, "--workdir=NEW", "--config.rlp.nonexistent=1"], "nonexistent"),
  ("main", [TINY, "--workdir=NEW", "--config.rlp.reg_lamda=1"], "reg_lamda"),
  ("main", [TINY, "--workdir=NEW", "--config.rlp.reg_lambda=abc"], "config.rlp.reg_lambda"),
  ("main", [TINY, "--workdir=NEW", "--config.mesh={'data': 2}"], "config.mesh"),
  ("main", [TINY, "--workdir=NEW", "--config.mesh.tensor=2"], "tensor"),
  ("main", [TINY, "--workdir=NEW", "--no_such_flag=1"], "no_such_flag"),
  ("main", [TINY, "--workdir=NEW", "extra"], "extra"),
  # main: values
  ("main", [TINY, "--workdir=NEW", "--config.rlp.reg_lambda=-1"], "config.rlp.reg_lambda"),
  ("main", [TINY, "--workdir=NEW", "--config.rlp.reg_lambda=nan"], "config.rlp.reg_lambda"),
  ("main", [TINY, "--workdir=NEW", "--config.rlp.label_mode=foo"], "config.rlp.label_mode"),
  ("main", [TINY, "--workdir=NEW", "--config.rlp.reg_normalization=n"], "config.rlp.reg_normalization"),
  # main: values that used to pass validation (issue 23)
  ("main", [TINY, "--workdir=NEW", "--config.data_dir=DATA", "--config.rlp.num_heads=1000000000"], "GiB"),
  ("main", [TINY, "--workdir=NEW", "--config.eval.train_examples=-5"], "config.eval.train_examples"),
  ("main", [TINY, "--workdir=NEW", "--config.eval.train_examples=0"], "config.eval.train_examples"),
  ("main", [TINY, "--workdir=NEW", "--config.optimizer.weight_decay=nan"], "config.optimizer.weight_decay"),
  ("main", [TINY, "--workdir=NEW", "--config.optimizer.learning_rate=inf"], "config.optimizer.learning_rate"),
  ("main", [TINY, "--workdir=NEW", "--config.seed=99999999999"], "config.seed"),
  ("main", [TINY, "--workdir=NEW", "--config.rlp.reg_layers=pre_logits,pre_logits"], "more than once"),
  (
    "main",
    [TINY, "--workdir=NEW", "--config.data_dir=DATA", "--config.dataset_fraction=1e-9"],
    "keeps no example",
  ),
  (
    "main",
    [TINY, "--workdir=NEW", "--config.data_dir=DATA", "--config.dataset_fraction=0.001"],
    "fewer than one batch",
  ),
  ("main", [TINY, "--workdir=NEW", "--config.rlp.num_labels=1"], "config.rlp.num_labels"),
  (
    "main",
    [TINY, "--workdir=NEW", "--config.rlp.layers=block_9", "--config.data_dir=DATA"],
    "config.rlp.layers",
  ),
  ("main", [TINY, "--workdir=NEW", "--config.model.name=resnet"], "config.model.name"),
  ("main", [TINY, "--workdir=NEW", "--config.model.dtype=float8"], "config.model.dtype"),
  ("main", [TINY, "--workdir=NEW", "--config.optimizer.name=lion"], "config.optimizer.name"),
  ("main", [TINY, "--workdir=NEW", "--config.batch_size=0"], "config.batch_size"),
  ("main", [TINY, "--workdir=NEW", "--config.num_epochs=-1"], "config.num_epochs"),
  ("main", [TINY, "--workdir=NEW", "--config.label_noise=1.5"], "config.label_noise"),
  ("main", [TINY, "--workdir=NEW", "--config.dataset_fraction=0"], "config.dataset_fraction"),
  ("main", [TINY, "--workdir=NEW", "--config.checkpoint.keep=0"], "config.checkpoint.keep"),
  ("main", [TINY, "--workdir=NEW", "--config.augment.crop=random"], "config.augment.crop"),
  ("main", [TINY, "--workdir=NEW", "--config.mesh.data=3", "--config.data_dir=DATA"], "config.mesh"),
  (
    "main",
    [TINY, "--workdir=NEW", "--config.dataset=no_such_dataset", "--config.data_dir=DATA"],
    "config.dataset",
  ),
  # offline
  ("offline", [], "--workdir is required"),
  ("offline", ["--workdir=MISSING"], "--workdir must be the directory of a run"),
  ("offline", ["--workdir=RUN", "--config.offline.num_epochs=0"], "config.offline.num_epochs"),
  ("offline", ["--workdir=RUN", "--config.offline.nope=1"], "nope"),
  ("offline", ["--workdir=RUN", "--config.model.width=8"], "config.model"),
  ("offline", ["--workdir=RUN", "--steps=abc"], "--steps"),
  ("offline", ["--workdir=RUN", "--steps=999"], "--steps"),
  ("offline", ["--workdir=RUN", "--output=../../x.jsonl"], "--output"),
  ("offline", ["--workdir=RUN", "extra"], "extra"),
  # memorization
  ("memorization", [], "--workdir is required"),
  ("memorization", ["--workdir=MISSING"], "--workdir must be the directory of a run"),
  ("memorization", ["--workdir=RUN", "--score=foo"], "--score"),
  ("memorization", ["--workdir=RUN", "--steps=abc"], "--steps"),
  ("memorization", ["--workdir=RUN", "--steps=12345"], "--steps"),
  ("memorization", ["--workdir=RUN", "--layer=block_9"], "--layer"),
  ("memorization", ["--workdir=RUN", "--layers=zzz"], "--layers"),
  ("memorization", ["--workdir=RUN", "--k=-1"], "--k"),
  ("memorization", ["--workdir=RUN", "--external=MISSING.npz"], "--external"),
  ("memorization", ["--workdir=RUN", "--ground_truth=MISSING.npz"], "--ground_truth"),
  # ground_truth
  ("ground_truth", ["--output=NEW.npz"], "--config is required"),
  ("ground_truth", [TINY], "--output"),
  ("ground_truth", [TINY, "--output=NEW"], "must name a .npz file"),
  ("ground_truth", [TINY, "--output=NEW.npz", "--subset=1.5"], "--subset"),
  ("ground_truth", [TINY, "--output=NEW.npz", "--num_models=1"], "--num_models"),
  (
    "ground_truth",
    [TINY, "--output=NEW.npz", "--config.rlp.reg_normalization=paperish"],
    "reg_normalization",
  ),
  # report
  ("report", [], "--workdir"),
  ("report", ["RUN"], "--workdir"),
  ("report", ["--workdir=MISSING"], "MISSING"),
  # sweep
  ("sweep", [], "--config is required"),
  ("sweep", ["--config=configs/nope.py", "--workdir=NEW"], "--config"),
  ("sweep", [TINY, "--workdir=NEW", "--sweep=rlp.nope=1,2"], "rlp.nope"),
  ("sweep", [TINY, "--workdir=NEW", "--sweep=garbage"], "garbage"),
  ("sweep", [TINY, "--workdir=NEW", "--sweep=rlp.reg_lambda=a,b"], "rlp.reg_lambda"),
  ("sweep", [TINY, "--workdir=NEW", "--emit=pbs"], "--emit"),
  # benchmark and plan
  ("benchmark", ["--config=configs/nope.py"], "--config"),
  ("benchmark", [TINY, "--steps=0"], "--steps"),
  ("benchmark", [TINY, "--variants=fast"], "--variants"),
  ("plan", [], "--config is required"),
  ("plan", ["--config=configs/digits.py", "--devices=-1"], "--devices"),
  ("plan", ["--config=configs/digits.py", "--device_kind=Z80"], "--device_kind"),
  ("plan", ["--config=configs/digits.py", "--mfu=2"], "--mfu"),
  ("benchmark", [TINY, "--input_per_core=8"], "--input_per_core makes imagenet2012 or cifar100"),
  # resize_dataset
  ("resize_dataset", ["--out_dir=NEW"], "--data_dir"),
  ("resize_dataset", ["--data_dir=MISSING", "--out_dir=NEW"], "holds no prepared imagenet2012"),
  ("resize_dataset", ["--dataset=digits", "--data_dir=DATA", "--out_dir=NEW"], "not JPEGs"),
  ("resize_dataset", ["--dataset=nope", "--data_dir=DATA", "--out_dir=NEW"], "--dataset"),
  ("resize_dataset", ["--data_dir=DATA", "--out_dir=NEW", "--quality=0"], "--quality"),
  # reproduce
  ("reproduce", ["--workdir=NEW"], "--config is required"),
  ("reproduce", ["--config=configs/nope.py", "--workdir=NEW"], "configs/nope.py"),
  ("reproduce", ["--config=configs/paper_digits.py:foo", "--workdir=NEW"], "unknown arg(s) ['foo']"),
  ("reproduce", ["--config=configs/digits.py", "--workdir=NEW"], "defines no get_studies"),
]


@pytest.fixture(scope="module")
def results(analysis_run, data_dir, tmp_path_factory):
  tmp = tmp_path_factory.mktemp("cli_errors")
  run = tmp / "run"
  shutil.copytree(analysis_run[1], run)
  (tmp / "file").write_text("not a directory\n")
  before = _listing(run)
  subs = {"RUN": str(run), "DATA": data_dir, "FILE": str(tmp / "file"), "MISSING": str(tmp / "missing")}

  def fill(arg: str, i: int) -> str:
    arg = arg.replace("=NEW", f"={tmp / f'new{i}'}")
    for key, value in subs.items():
      arg = arg.replace(f"={key}", f"={value}")
      if arg == key:
        arg = value
    return arg

  cases = [
    {"module": f"rlp_jax.{cmd}", "argv": [fill(a, i) for a in argv], "cwd": str(ROOT)}
    for i, (cmd, argv, _) in enumerate(CASES)
  ]
  cases += [{"module": f"rlp_jax.{cmd}", "argv": ["--help"], "cwd": str(ROOT)} for cmd in COMMANDS]
  (tmp / "cases.json").write_text(json.dumps(cases))
  proc = subprocess.run(
    [
      sys.executable,
      str(ROOT / "tests" / "cli_driver.py"),
      str(tmp / "cases.json"),
      str(tmp / "results.json"),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((tmp / "results.json").read_text()), subs, before, _listing(run), tmp


def _listing(path: Path) -> dict[str, int]:
  return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


def test_the_table_covers_every_command_with_at_least_40_command_lines():
  assert {cmd for cmd, _, _ in CASES} == set(COMMANDS)
  assert len(CASES) >= 40


@pytest.mark.parametrize("i", range(len(CASES)), ids=[f"{c}:{' '.join(a)[-50:]}" for c, a, _ in CASES])
def test_a_bad_command_line_is_one_error_line_and_exit_status_2(results, i):
  out, subs, _, _, tmp = results
  _, _, named = CASES[i]
  r = out[i]
  stderr = r["stderr"]
  assert "Traceback" not in stderr, stderr[-3000:]
  assert r["rc"] == 2, (r["rc"], stderr[-3000:])
  lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, stderr[-3000:]
  assert named.replace("MISSING", subs["MISSING"]) in lines[0], lines[0]
  assert not os.path.exists(tmp / f"new{i}"), "a refused command line created its workdir"


def test_refused_command_lines_leave_the_run_as_it_was(results):
  _, _, before, after, _ = results
  assert after == before


@pytest.mark.parametrize("j", range(len(COMMANDS)), ids=COMMANDS)
def test_every_command_has_help(results, j):
  """``--help`` lists the command's flags (absl ends --help with exit status 1)."""
  r = results[0][len(CASES) + j]
  assert "Traceback" not in r["stderr"], r["stderr"][-2000:]
  assert "--workdir" in r["stdout"] or "--config" in r["stdout"], r["stdout"][-2000:]


def test_design_states_the_size_of_this_table():
  design = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
  words = {8: "eight", 9: "nine", 10: "ten", 11: "eleven", 12: "twelve"}
  stated = f"{len(CASES)} bad command lines over all {words.get(len(COMMANDS), len(COMMANDS))} commands"
  assert stated in design, f"docs/design.md §6 should say: {stated}"
