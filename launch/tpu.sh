#!/usr/bin/env bash
# Cloud TPU VMs and pod slices for rlp_jax: create, copy the code and install it, run on every worker, delete.
# Run with --help for usage. Every gcloud command goes through run_cmd, so --dry-run prints exactly what runs.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

PROG=launch/tpu.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh COMMAND [options] [-- MAIN_ARGS...]

Manage a Cloud TPU VM or pod slice and run rlp_jax on all of its workers.

Commands:
  create   create the TPU VM / pod slice (a queued resource with --queued)
  setup    copy this checkout (or --repo) to every worker, then on each one create a Python venv and
           pip install -r requirements.txt -e . followed by pip install -U "jax[tpu]"
  run      on every worker: python -m rlp_jax.main --config=CONFIG --workdir=gs://... MAIN_ARGS...
           (streams the logs of all workers and appends them to REMOTE_DIR/logs/run.log;
           --detach starts it in the background and returns)
  logs     follow REMOTE_DIR/logs/run.log on --worker (default 0)
  stop     send SIGTERM to a --detach'ed run (it saves a checkpoint and exits; 'run' again resumes)
  exec     run MAIN_ARGS as a shell command on every worker (e.g. -- nvidia-smi, -- df -h)
  status   describe the TPU (and its queued resource with --queued)
  delete   delete the TPU (with --queued: the queued resource and its TPU)

Options (defaults in brackets; each can also be set by the environment variable named):
  --name NAME          TPU / queued-resource name [$RLP_TPU_NAME, else rlp-jax]
  --zone ZONE          zone, e.g. us-central2-b, us-west4-a [$RLP_TPU_ZONE; required]
  --project PROJECT    GCP project [$RLP_TPU_PROJECT, else gcloud's configured project]
  --type TYPE          accelerator type, e.g. v4-8, v4-32, v5litepod-16, v5p-8, v6e-8 [$RLP_TPU_TYPE, else v4-8]
  --version VERSION    TPU runtime (software) version [$RLP_TPU_VERSION, else from --type:
                       v2/v3/v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite, v5p v2-alpha-tpuv5,
                       v6e v2-alpha-tpuv6e]
  --spot               create a Spot TPU (preemptible: run with --detach, 'run' again resumes)
  --queued             create / delete / describe through 'gcloud compute tpus queued-resources';
                       create waits until the queued resource is ACTIVE
  --create-flag FLAG   extra flag for the create command, repeatable (e.g. --create-flag=--network=NET)
  --config FILE[:ARG]  experiment config, relative to the repository root; FILE must exist (run; required)
  --workdir gs://...   experiment directory; must be a gs:// path that every worker shares (run; required)
  --local-workdir      allow a --workdir that is not gs:// (single-host TPU VMs only)
  --env VAR=VALUE      environment variable for the run (VALUE exactly as given, spaces too), repeatable
  --detach             run: start in the background (nohup) on every worker and return
  --worker W           logs: which worker to follow (0, 1, ... or all) [0]
  --remote-dir DIR     code directory on the workers, relative to the home directory [$RLP_TPU_REMOTE_DIR, else rlp_jax]
  --repo URL           setup: git clone URL on the workers instead of copying this checkout
  --ref REF            setup with --repo: branch, tag or commit to check out [the remote's HEAD]
  --python VERSION     setup: Python version for the venv (installed with uv) [$RLP_TPU_PYTHON, else 3.12]
  --dry-run            print each exact command instead of running it
  -h, --help           show this help
Everything after -- is passed to python -m rlp_jax.main (run) or is the command (exec). Every value is
written quoted into the remote command; control characters (newlines, ...) are refused.

Examples:
  launch/tpu.sh create --name rlp-v4 --zone us-central2-b --type v4-32 --spot --queued
  launch/tpu.sh setup  --name rlp-v4 --zone us-central2-b
  launch/tpu.sh run    --name rlp-v4 --zone us-central2-b --config configs/digits.py \
      --workdir gs://BUCKET/rlp/digits_l1e4 --detach -- --config.rlp.reg_lambda=1e4
  launch/tpu.sh logs   --name rlp-v4 --zone us-central2-b
  launch/tpu.sh delete --name rlp-v4 --zone us-central2-b --queued
On a pod slice, jax.distributed.initialize() finds the other workers by itself (no variables to set);
the workers' service account needs write access to the gs:// bucket.
EOF
}

COMMAND=""
NAME=${RLP_TPU_NAME:-rlp-jax}
ZONE=${RLP_TPU_ZONE:-}
PROJECT=${RLP_TPU_PROJECT:-}
TYPE=${RLP_TPU_TYPE:-v4-8}
VERSION=${RLP_TPU_VERSION:-}
SPOT=0
QUEUED=0
CONFIG=""
WORKDIR=""
LOCAL_WORKDIR=0
DETACH=0
WORKER=0
REMOTE_DIR=${RLP_TPU_REMOTE_DIR:-rlp_jax}
REPO=""
REF=""
PYTHON_VERSION=${RLP_TPU_PYTHON:-3.12}
DRY_RUN=0
CREATE_FLAGS=()
ENVS=()
EXTRA=()

set_opt() {
  need_value "$1" "$2"
  check_text "$1" "$2"
  case $1 in
    --name) NAME=$2 ;;
    --zone) ZONE=$2 ;;
    --project) PROJECT=$2 ;;
    --type) TYPE=$2 ;;
    --version) VERSION=$2 ;;
    --config) CONFIG=$2 ;;
    --workdir) WORKDIR=$2 ;;
    --worker) WORKER=$2 ;;
    --remote-dir) REMOTE_DIR=$2 ;;
    --repo) REPO=$2 ;;
    --ref) REF=$2 ;;
    --python) PYTHON_VERSION=$2 ;;
    --create-flag) CREATE_FLAGS+=("$2") ;;
    --env)
      check_env_assignment "$2"
      ENVS+=("$2") ;;
  esac
}

VALUE_OPTS='--name|--zone|--project|--type|--version|--config|--workdir|--worker|--remote-dir|--repo|--ref|--python|--create-flag|--env'
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@")
      check_no_dry_run_after_dashdash "$@"
      check_text "arguments after --" "$@"
      break ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --detach) DETACH=1 ;;
    --local-workdir) LOCAL_WORKDIR=1 ;;
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
    *)
      [[ -z $COMMAND ]] || die "unexpected argument $(show "$1"): pass arguments for rlp_jax.main after --"
      COMMAND=$1 ;;
  esac
  shift
done

COMMANDS="create, setup, run, logs, stop, exec, status, delete"
[[ -n $COMMAND ]] || die "missing COMMAND ($COMMANDS); see $PROG --help"
case $COMMAND in
  create | setup | run | logs | stop | exec | status | delete) ;;
  *) die "unknown command $(show "$COMMAND") ($COMMANDS)" ;;
esac
require --name "$NAME" "or RLP_TPU_NAME"
require --zone "$ZONE" "or RLP_TPU_ZONE"
# Values the environment variables may have set are checked here, those of options in set_opt too.
for opt in --zone:"$ZONE" --project:"$PROJECT" --type:"$TYPE" --version:"$VERSION" --remote-dir:"$REMOTE_DIR" \
  --python:"$PYTHON_VERSION" --repo:"$REPO" --ref:"$REF"; do
  [[ -z ${opt#*:} ]] || check_word "${opt%%:*}" "${opt#*:}"
done
# GCP's rule for TPU names; the name is also part of a local file name (setup's tarball).
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  die "--name: must be lowercase letters, digits and '-', starting with a letter, got $(show "$NAME")"
[[ $WORKER =~ ^(all|[0-9]+(,[0-9]+)*)$ ]] || die "--worker: must be all or worker numbers (0 or 0,1), got $(show "$WORKER")"

default_version() {
  case $1 in
    v2-* | v3-* | v4-*) echo tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo "" ;;
  esac
}

SCOPE=(--zone="$ZONE")
[[ -z $PROJECT ]] || SCOPE+=(--project="$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
QR=(gcloud compute tpus queued-resources)
RDIR=$(shq "$REMOTE_DIR")

# ssh_on WORKER COMMAND: run the shell COMMAND on WORKER (all, 0, 1, ...) of the TPU.
ssh_on() {
  run_cmd "${TPU[@]}" ssh "$NAME" "${SCOPE[@]}" --worker="$1" --command="$2"
}

cmd_create() {
  require --type "$TYPE" "or RLP_TPU_TYPE"
  [[ -n $VERSION ]] || VERSION=$(default_version "$TYPE")
  require --version "$VERSION" "no default runtime version for --type $TYPE"
  local flags=(--accelerator-type="$TYPE")
  if ((SPOT)); then flags+=(--spot); fi
  if ((QUEUED)); then
    run_cmd "${QR[@]}" create "$NAME" "${SCOPE[@]}" --node-id="$NAME" "${flags[@]}" \
      --runtime-version="$VERSION" ${CREATE_FLAGS[@]+"${CREATE_FLAGS[@]}"}
    local describe=("${QR[@]}" describe "$NAME" "${SCOPE[@]}" --format='value(state.state)')
    if ((DRY_RUN)); then
      echo "# then, every 30 s until it prints ACTIVE:"
      run_cmd "${describe[@]}"
    else
      local state
      while true; do
        state=$("${describe[@]}")
        echo "queued resource $NAME: $state" >&2
        case $state in
          ACTIVE) break ;;
          FAILED | SUSPENDED) die "queued resource $NAME is $state ('$PROG status --queued' for details)" ;;
        esac
        sleep 30
      done
    fi
  else
    run_cmd "${TPU[@]}" create "$NAME" "${SCOPE[@]}" "${flags[@]}" --version="$VERSION" ${CREATE_FLAGS[@]+"${CREATE_FLAGS[@]}"}
  fi
}

cmd_setup() {
  if [[ -n $REPO ]]; then
    local repo ref
    repo=$(shq "$REPO")
    ref=$(shq "${REF:-HEAD}")
    ssh_on all "if [ -d $RDIR/.git ]; then git -C $RDIR fetch origin $ref && git -C $RDIR checkout --force FETCH_HEAD; else git clone -- $repo $RDIR && git -C $RDIR checkout $ref; fi"
  else
    local tarball="${TMPDIR:-/tmp}/rlp_jax-$NAME.tar.gz"
    run_cmd tar -czf "$tarball" --exclude=./.venv --exclude=./.git --exclude=__pycache__ --exclude='*.egg-info' \
      --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude=./slurm_logs -C "$REPO_ROOT" .
    run_cmd "${TPU[@]}" scp "$tarball" "$NAME:rlp_jax_code.tar.gz" "${SCOPE[@]}" --worker=all
    ssh_on all "mkdir -p $RDIR && tar -xzf rlp_jax_code.tar.gz -C $RDIR && rm rlp_jax_code.tar.gz"
  fi
  local py
  py=$(shq "$PYTHON_VERSION")
  ssh_on all "set -e; cd $RDIR; export PATH=\"\$HOME/.local/bin:\$PATH\"; command -v uv >/dev/null || python3 -m pip install --user --quiet uv; [ -x .venv/bin/python ] || uv venv --seed --python $py .venv; .venv/bin/python -m pip install --quiet -r requirements.txt -e .; .venv/bin/python -m pip install --quiet -U \"jax[tpu]\"; .venv/bin/python -c 'import jax; print(\"process\", jax.process_index(), \"of\", jax.process_count(), \"local devices\", jax.local_device_count(), \"devices\", jax.device_count())'"
}

# main_command: the rlp_jax.main command line, quoted (the --env assignments go in front, see cmd_run).
main_command() {
  local args=() a extra_config="" extra_workdir=""
  for a in ${EXTRA[@]+"${EXTRA[@]}"}; do
    case $a in
      --config=*) extra_config=${a#--config=} ;;
      --workdir=*) extra_workdir=${a#--workdir=} ;;
    esac
  done
  if [[ -n $CONFIG ]]; then
    args+=(--config="$CONFIG")
  else
    require --config "$extra_config" "e.g. --config configs/digits.py"
  fi
  check_config_file --config "${CONFIG:-$extra_config}" "$REPO_ROOT"
  if [[ -n $WORKDIR ]]; then
    args+=(--workdir="$WORKDIR")
  else
    require --workdir "$extra_workdir" "a gs://BUCKET/PATH that every worker can write"
    WORKDIR=$extra_workdir
  fi
  if [[ $WORKDIR != gs://* ]] && ((!LOCAL_WORKDIR)); then
    die "--workdir: must be a gs:// path that every worker shares, got $(show "$WORKDIR"); pass --local-workdir on a single-host TPU VM to allow a local path"
  fi
  quote_args .venv/bin/python -m rlp_jax.main ${args[@]+"${args[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
}

cmd_run() {
  local main envs
  main=$(main_command)
  # VAR='VALUE' words in front of the command that they are for (nohup's, so that it passes them on).
  envs=$(env_assignments ${ENVS[@]+"${ENVS[@]}"})
  if ((DETACH)); then
    ssh_on all "cd $RDIR && mkdir -p logs && { ${envs:+$envs }nohup $main >> logs/run.log 2>&1 < /dev/null & echo \$! > logs/run.pid; } && echo \"started pid \$(cat logs/run.pid) on \$(hostname)\""
    ((DRY_RUN)) || echo "Started on every worker. Follow it with: $PROG logs --name $(shq "$NAME") --zone $(shq "$ZONE")" >&2
  else
    ssh_on all "set -o pipefail && cd $RDIR && mkdir -p logs && ${envs:+$envs }$main 2>&1 | tee -a logs/run.log"
  fi
}

case $COMMAND in
  create) cmd_create ;;
  setup) cmd_setup ;;
  run) cmd_run ;;
  logs) ssh_on "$WORKER" "tail -n 200 -F $RDIR/logs/run.log" ;;
  stop) ssh_on all "kill -TERM \"\$(cat $RDIR/logs/run.pid)\"" ;;
  exec)
    ((${#EXTRA[@]})) || die "exec: needs a command after --, e.g. exec -- df -h"
    ssh_on all "cd $RDIR && $(quote_args ${EXTRA[@]+"${EXTRA[@]}"})" ;;
  status)
    if ((QUEUED)); then run_cmd "${QR[@]}" describe "$NAME" "${SCOPE[@]}"; fi
    run_cmd "${TPU[@]}" describe "$NAME" "${SCOPE[@]}" ;;
  delete)
    if ((QUEUED)); then
      run_cmd "${QR[@]}" delete "$NAME" "${SCOPE[@]}" --force --quiet
    else
      run_cmd "${TPU[@]}" delete "$NAME" "${SCOPE[@]}" --quiet
    fi ;;
esac
