#!/usr/bin/env bash
# One run per value of a config key (default rlp.reg_lambda, i.e. λ), through launch/tpu.sh or launch/slurm.sh.
# The runs, their workdir names and their command lines come from `python -m rlp_jax.sweep --emit`, so a
# sweep launched here and `python -m rlp_jax.sweep --summarize` name the same runs the same way.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

PROG=launch/sweep.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'EOF'
Usage: launch/sweep.sh tpu|slurm --values V1,V2,... --workdir PREFIX --config CONFIG [--key KEY]
           [LAUNCHER_OPTIONS...] [-- MAIN_ARGS...]

For each value V: launch/tpu.sh run (one after the other on the same slice) or launch/slurm.sh (one job
each) with --workdir PREFIX/KEY=V (V as rlp_jax.sweep writes it: 1e3 -> 1000) and MAIN_ARGS plus
--config.KEY=V. Runs already finished under PREFIX are not launched again.
  --values V1,V2,...  the values (required)
  --key KEY           the config key to sweep [rlp.reg_lambda]
  --workdir PREFIX    parent of the runs' workdirs (required)
  --config CONFIG     the experiment's config file, configs/*.py[:arg], relative to the repository root;
                      it must exist (required)
LAUNCHER_OPTIONS (e.g. --name/--zone, --gpus-per-node, --dry-run) go to every launch.
Needs the project installed here (python -m rlp_jax.sweep names the runs); $PYTHON picks the interpreter.

Example:
  launch/sweep.sh slurm --values 0,1e3,1e4 --workdir /shared/rlp/digits --gpus-per-node 8 \
      --config configs/digits.py --dry-run
EOF
}

[[ ${1:-} != -h && ${1:-} != --help ]] || { usage; exit 0; }
LAUNCHER=${1:-}
case $LAUNCHER in
  tpu | slurm) ;;
  "") die "missing launcher (tpu or slurm); see $PROG --help" ;;
  *) die "unknown launcher $(show "$LAUNCHER") (tpu or slurm)" ;;
esac
shift

KEY=rlp.reg_lambda
VALUES=""
PREFIX=""
CONFIG=""
OPTS=()
MAIN=()
while (($#)); do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --) shift; MAIN=("$@"); break ;;
    --key=* | --values=* | --workdir=* | --config=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;;
    --key | --values | --workdir | --config)
      (($# >= 2)) && [[ -n $2 ]] || die "$1: needs a value"
      case $1 in
        --key) KEY=$2 ;;
        --values) VALUES=$2 ;;
        --workdir) PREFIX=$2 ;;
        --config) CONFIG=$2 ;;
      esac
      shift ;;
    --detach) [[ $LAUNCHER != tpu ]] || die "--detach: would start every run at once on the same TPU; sweep runs them one after the other"
      OPTS+=("$1") ;;
    *) OPTS+=("$1") ;;
  esac
  shift
done
require --values "$VALUES" "e.g. --values 0,1e3,1e4"
require --workdir "$PREFIX" "the runs go to PREFIX/<key>=<value>"
require --config "$CONFIG" "e.g. --config configs/digits.py"
# The launch lines come back from rlp_jax.sweep one per line and are eval'd: a newline inside an argument
# would cut one of them in two, so control characters are refused before anything is planned.
check_text --key "$KEY"
check_text --values "$VALUES"
check_text --workdir "$PREFIX"
check_text --config "$CONFIG"
check_text "launcher options" ${OPTS[@]+"${OPTS[@]}"}
check_text "arguments after --" ${MAIN[@]+"${MAIN[@]}"}
check_config_file --config "$CONFIG" "$REPO_ROOT"

# rlp_jax.sweep prints one shell-quoted launcher line per unfinished run, "launch/<launcher> ...": run
# each with this script's own copy of the launcher.
lines=$("${PYTHON:-python3}" -m rlp_jax.sweep --config="$CONFIG" --workdir="${PREFIX%/}" \
  --sweep="$KEY=$VALUES" --emit="$LAUNCHER" --launcher_args="$(quote_args ${OPTS[@]+"${OPTS[@]}"})" \
  ${MAIN[@]+"${MAIN[@]}"}) || exit 2 # rlp_jax.sweep has said why, in one line
while IFS= read -r line; do
  [[ $line == launch/* ]] || continue
  eval "\"\$HERE\"/${line#launch/}"
done <<<"$lines"
