#!/usr/bin/env bash
# SLURM GPU clusters for rlp_jax: writes a batch script that srun's python -m rlp_jax.main and submits it.
# Run with --help for usage. --dry-run prints the job script and the sbatch command instead.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

PROG=launch/slurm.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/slurm.sh --config FILE[:ARG] --workdir DIR --gpus-per-node G [options] [-- MAIN_ARGS...]

Write a SLURM batch script that runs
  srun python -m rlp_jax.main --config=FILE[:ARG] --workdir=DIR MAIN_ARGS...
with one process per GPU (default) or one per node, and submit it with sbatch.

Options (defaults in brackets; each can also be set by the environment variable named):
  --config FILE[:ARG]    experiment config, relative to --chdir; FILE must exist (required)
  --workdir DIR          experiment directory on a filesystem every node shares; relative paths are
                         relative to --chdir (required). Submitting the same command again resumes.
  --nodes N              number of nodes [$RLP_SLURM_NODES, else 1]
  --gpus-per-node G      GPUs per node (#SBATCH --gres=gpu:G) [$RLP_SLURM_GPUS_PER_NODE; required]
  --procs-per-node P     gpu (= G, one process per GPU) or node (= 1, one process driving all G GPUs) [gpu]
  --partition NAME       partition [$RLP_SLURM_PARTITION, else the cluster's default]
  --time T               time limit, e.g. 24:00:00 [$RLP_SLURM_TIME, else the partition's default]
  --account NAME         account to charge [$RLP_SLURM_ACCOUNT]
  --qos NAME             quality of service
  --constraint FEATURES  node features, e.g. a100|h100
  --cpus-per-task C      CPUs per process
  --mem SIZE             memory per node, e.g. 200G (0 = all of it)
  --exclusive            whole nodes only
  --job-name NAME        [rlp_jax]
  --signal-seconds S     send SIGTERM to the run S seconds before the time limit so that it saves a
                         checkpoint (0 = off) [120]
  --requeue              let SLURM requeue the job after preemption or node failure (it resumes)
  --python PATH          Python interpreter on the nodes [$RLP_SLURM_PYTHON, else python]
  --setup CMD            shell line run before srun, as written (it is shell code), repeatable
                         (e.g. --setup 'module load cuda/12.4' --setup 'source .venv/bin/activate')
  --env VAR=VALUE        exported in the job (VALUE exactly as given), repeatable
  --sbatch-arg ARG       extra #SBATCH line, repeatable (e.g. --sbatch-arg=--mail-type=END)
  --chdir DIR            repository checkout on the nodes [this checkout]
  --log-dir DIR          where the job script and the SLURM output go [$RLP_SLURM_LOG_DIR, else CHDIR/slurm_logs]
  --dry-run              print the job script and the sbatch command instead of submitting
  -h, --help             show this help
Everything after -- is passed to python -m rlp_jax.main. Every value is written quoted into the job script
(or, on #SBATCH lines, must be one word); control characters (newlines, ...) are refused.

jax.distributed.initialize() needs no variables under SLURM: it reads SLURM_JOB_ID, SLURM_STEP_NODELIST,
SLURM_NTASKS, SLURM_PROCID and SLURM_LOCALID (coordinator = the first node of the step, port derived from
the job id). With one process per GPU each process takes the GPU numbered by its SLURM_LOCALID, so the
tasks must see all of the node's GPUs (no --gpus-per-task / per-task GPU binding); with one process per
node the script sets JAX_LOCAL_DEVICE_IDS=0,...,G-1 so that the process drives every GPU.

Example:
  launch/slurm.sh --nodes 2 --gpus-per-node 8 --partition gpu --time 24:00:00 \
      --setup 'source .venv/bin/activate' --config configs/digits.py --workdir /shared/rlp/digits_l1e4 \
      -- --config.rlp.reg_lambda=1e4
EOF
}

CONFIG=""
WORKDIR=""
NODES=${RLP_SLURM_NODES:-1}
GPUS=${RLP_SLURM_GPUS_PER_NODE:-}
PROCS=gpu
PARTITION=${RLP_SLURM_PARTITION:-}
TIME=${RLP_SLURM_TIME:-}
ACCOUNT=${RLP_SLURM_ACCOUNT:-}
QOS=""
CONSTRAINT=""
CPUS=""
MEM=""
EXCLUSIVE=0
JOB_NAME=rlp_jax
SIGNAL_SECONDS=120
REQUEUE=0
PYTHON=${RLP_SLURM_PYTHON:-python}
CHDIR=$REPO_ROOT
LOG_DIR=${RLP_SLURM_LOG_DIR:-}
DRY_RUN=0
SETUP=()
ENVS=()
SBATCH_ARGS=()
EXTRA=()

set_opt() {
  need_value "$1" "$2"
  check_text "$1" "$2"
  case $1 in
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --nodes) NODES=$2 ;;
    --gpus-per-node) GPUS=$2 ;;
    --procs-per-node) PROCS=$2 ;;
    --partition) PARTITION=$2 ;;
    --time) TIME=$2 ;;
    --account) ACCOUNT=$2 ;;
    --qos) QOS=$2 ;;
    --constraint) CONSTRAINT=$2 ;;
    --cpus-per-task) CPUS=$2 ;;
    --mem) MEM=$2 ;;
    --job-name) JOB_NAME=$2 ;;
    --signal-seconds) SIGNAL_SECONDS=$2 ;;
    --python) PYTHON=$2 ;;
    --chdir) CHDIR=$2 ;;
    --log-dir) LOG_DIR=$2 ;;
    --setup) SETUP+=("$2") ;;
    --sbatch-arg) SBATCH_ARGS+=("$2") ;;
    --env)
      check_env_assignment "$2"
      ENVS+=("$2") ;;
  esac
}

VALUE_OPTS='--config|--workdir|--nodes|--gpus-per-node|--procs-per-node|--partition|--time|--account|--qos|--constraint|--cpus-per-task|--mem|--job-name|--signal-seconds|--python|--chdir|--log-dir|--setup|--sbatch-arg|--env'
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@")
      check_no_dry_run_after_dashdash "$@"
      check_text "arguments after --" "$@"
      break ;;
    --exclusive) EXCLUSIVE=1 ;;
    --requeue) REQUEUE=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --*=*)
      opt=${1%%=*}
      [[ $opt =~ ^($VALUE_OPTS)$ ]] || die "$(show "$opt"): unknown option; see $PROG --help"
      set_opt "$opt" "${1#*=}" ;;
    -*)
      [[ $1 =~ ^($VALUE_OPTS)$ ]] || die "$(show "$1"): unknown option; see $PROG --help"
      (($# >= 2)) || die "$1: needs a value"
      set_opt "$1" "$2"
      shift ;;
    *) die "unexpected argument $(show "$1"): pass arguments for rlp_jax.main after --" ;;
  esac
  shift
done

require --config "$CONFIG" "e.g. --config configs/digits.py"
require --workdir "$WORKDIR" "a directory on a filesystem that every node shares"
require --gpus-per-node "$GPUS" "or RLP_SLURM_GPUS_PER_NODE"
[[ $NODES =~ ^[1-9][0-9]*$ ]] || die "--nodes: must be a positive integer, got $(show "$NODES")"
[[ $GPUS =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node: must be a positive integer, got $(show "$GPUS")"
[[ -z $CPUS || $CPUS =~ ^[1-9][0-9]*$ ]] || die "--cpus-per-task: must be a positive integer, got $(show "$CPUS")"
[[ $SIGNAL_SECONDS =~ ^[0-9]+$ ]] || die "--signal-seconds: must be a non-negative integer, got $(show "$SIGNAL_SECONDS")"
case $PROCS in
  gpu | "$GPUS") TASKS_PER_NODE=$GPUS ;;
  node | 1) TASKS_PER_NODE=1 ;;
  *) die "--procs-per-node: must be gpu ($GPUS) or node (1), got $(show "$PROCS")" ;;
esac
[[ $JOB_NAME =~ ^[A-Za-z0-9_.-]+$ ]] || die "--job-name: may hold only letters, digits, '_', '.' and '-', got $(show "$JOB_NAME")"
LOG_DIR=${LOG_DIR:-$CHDIR/slurm_logs}
# Values that the environment variables may have set are checked here, those of options in set_opt too.
# #SBATCH lines are read by sbatch, not by a shell: nothing can be quoted there, so each value is one word.
for opt in --partition:"$PARTITION" --time:"$TIME" --account:"$ACCOUNT" --qos:"$QOS" \
  --constraint:"$CONSTRAINT" --mem:"$MEM" --log-dir:"$LOG_DIR"; do
  [[ -z ${opt#*:} ]] || check_word "${opt%%:*}" "${opt#*:}"
done
for arg in "${SBATCH_ARGS[@]}"; do  # an #SBATCH option itself ('--mail-type=END'): one word, '-' allowed
  check_text --sbatch-arg "$arg"
  [[ $arg != *[[:space:]]* ]] || die "--sbatch-arg: one word per #SBATCH line (sbatch reads no quotes), got $(show "$arg")"
done
for opt in --python:"$PYTHON" --chdir:"$CHDIR"; do
  check_text "${opt%%:*}" "${opt#*:}"
  [[ ${opt#*:} != -* ]] || die "${opt%%:*}: must not start with '-', got $(show "${opt#*:}")"
done
check_config_file --config "$CONFIG" "$CHDIR"

job_script() {
  local line
  echo "#!/bin/bash"
  echo "# Written by $PROG: $NODES node(s) x $TASKS_PER_NODE process(es), $GPUS GPU(s) per node."
  echo "#SBATCH --job-name=$JOB_NAME"
  echo "#SBATCH --nodes=$NODES"
  echo "#SBATCH --ntasks-per-node=$TASKS_PER_NODE"
  echo "#SBATCH --gres=gpu:$GPUS"
  [[ -z $CPUS ]] || echo "#SBATCH --cpus-per-task=$CPUS"
  [[ -z $MEM ]] || echo "#SBATCH --mem=$MEM"
  [[ -z $PARTITION ]] || echo "#SBATCH --partition=$PARTITION"
  [[ -z $TIME ]] || echo "#SBATCH --time=$TIME"
  [[ -z $ACCOUNT ]] || echo "#SBATCH --account=$ACCOUNT"
  [[ -z $QOS ]] || echo "#SBATCH --qos=$QOS"
  [[ -z $CONSTRAINT ]] || echo "#SBATCH --constraint=$CONSTRAINT"
  if ((EXCLUSIVE)); then echo "#SBATCH --exclusive"; fi
  if ((SIGNAL_SECONDS > 0)); then echo "#SBATCH --signal=TERM@$SIGNAL_SECONDS"; fi
  if ((REQUEUE)); then
    echo "#SBATCH --requeue"
    echo "#SBATCH --open-mode=append"
  fi
  echo "#SBATCH --output=$LOG_DIR/%x-%j.out"
  for line in ${SBATCH_ARGS[@]+"${SBATCH_ARGS[@]}"}; do
    echo "#SBATCH $line"
  done
  echo "set -eo pipefail"
  echo "cd $(shq "$CHDIR")"
  for line in ${SETUP[@]+"${SETUP[@]}"}; do
    echo "$line"
  done
  for line in ${ENVS[@]+"${ENVS[@]}"}; do
    echo "export $(env_assignments "$line")"
  done
  echo "# jax.distributed.initialize() reads SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and"
  echo "# SLURM_LOCALID itself: coordinator = first node of the step; process i of a node uses GPU SLURM_LOCALID."
  if ((TASKS_PER_NODE == 1 && GPUS > 1)); then
    echo "# One process per node: let it drive all $GPUS GPUs instead of only GPU SLURM_LOCALID=0."
    echo "export JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((GPUS - 1)))"
  fi
  local args=(--config="$CONFIG" --workdir="$WORKDIR")
  echo "srun --kill-on-bad-exit=1 $(quote_args "$PYTHON" -m rlp_jax.main "${args[@]}" ${EXTRA[@]+"${EXTRA[@]}"})"
}

SCRIPT=$(job_script)
SCRIPT_FILE="$LOG_DIR/$JOB_NAME-$(date +%Y%m%d-%H%M%S)-$$.sbatch"
if ((DRY_RUN)); then
  echo "# ---- job script (written to $SCRIPT_FILE) ----"
  printf '%s\n' "$SCRIPT"
  echo "# ---- commands ----"
  run_cmd mkdir -p "$LOG_DIR"
  run_cmd sbatch "$SCRIPT_FILE"
else
  command -v sbatch >/dev/null || die "sbatch: not found; run this on a SLURM login node (or use --dry-run)"
  run_cmd mkdir -p "$LOG_DIR"
  printf '%s\n' "$SCRIPT" >"$SCRIPT_FILE"
  echo "job script: $SCRIPT_FILE" >&2
  run_cmd sbatch "$SCRIPT_FILE"
  echo "SLURM output: $LOG_DIR/$JOB_NAME-<jobid>.out" >&2
fi
