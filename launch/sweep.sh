#!/usr/bin/env bash
# One run per value of a config key (default rlp.reg_lambda, i.e. λ), through launch/tpu.sh or launch/slurm.sh.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

PROG=launch/sweep.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/sweep.sh tpu|slurm --values V1,V2,... --workdir PREFIX [--key KEY] [LAUNCHER_OPTIONS...] [-- MAIN_ARGS...]

For each value V: launch/tpu.sh run (one after the other on the same slice) or launch/slurm.sh (one job
each) with --workdir PREFIX/<last part of KEY>_V and MAIN_ARGS plus --config.KEY=V.
  --values V1,V2,...  the values (required)
  --key KEY           the config key to sweep [rlp.reg_lambda]
  --workdir PREFIX    parent of the runs' workdirs (required)
LAUNCHER_OPTIONS (e.g. --name/--zone/--config, --gpus-per-node/--config, --dry-run) go to every launch.

Example:
  launch/sweep.sh slurm --values 0,1e3,1e4 --workdir /shared/rlp/digits --gpus-per-node 8 \
      --config configs/digits.py --dry-run
EOF
}

[[ ${1:-} != -h && ${1:-} != --help ]] || { usage; exit 0; }
LAUNCHER=${1:-}
case $LAUNCHER in
  tpu) LAUNCH=("$HERE/tpu.sh" run) ;;
  slurm) LAUNCH=("$HERE/slurm.sh") ;;
  "") die "missing launcher (tpu or slurm)" ;;
  *) die "unknown launcher '$LAUNCHER' (tpu or slurm)" ;;
esac
shift

KEY=rlp.reg_lambda
VALUES=""
PREFIX=""
OPTS=()
MAIN=()
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --) shift; MAIN=("$@"); break ;;
    --key=* | --values=* | --workdir=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --key | --values | --workdir)
      (($# >= 2)) && [[ -n $2 ]] || die "option $1 needs a value"
      case $1 in
        --key) KEY=$2 ;;
        --values) VALUES=$2 ;;
        --workdir) PREFIX=$2 ;;
      esac
      shift ;;
    --detach) [[ $LAUNCHER != tpu ]] || die "--detach would start every run at once on the same TPU: sweep runs them one after the other"
      OPTS+=("$1") ;;
    *) OPTS+=("$1") ;;
  esac
  shift
done
require --values "$VALUES" "e.g. --values 0,1e3,1e4"
require --workdir "$PREFIX" "the runs go to PREFIX/<key>_<value>"

IFS=, read -r -a VALUE_LIST <<<"$VALUES"
for value in "${VALUE_LIST[@]}"; do
  [[ -n $value ]] || continue
  "${LAUNCH[@]}" ${OPTS[@]+"${OPTS[@]}"} --workdir="${PREFIX%/}/${KEY##*.}_$value" \
    -- ${MAIN[@]+"${MAIN[@]}"} "--config.$KEY=$value"
done
