#!/usr/bin/env bash
# Wheels for a GPU machine that has JAX preinstalled but not the rest of requirements.txt (tfds,
# ml_collections, clu, flax, ...): download them here, carry the folder along, install them there offline.
# Run with --help for usage.
set -euo pipefail

PROG=launch/device_wheels.sh
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=common.sh
source "$HERE/common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/device_wheels.sh download [--python-version V] [--dir DIR]
       launch/device_wheels.sh install [--dir DIR]

download  pip-downloads the pure-Python part of requirements.txt that the benchmarks and training need
          (flax, optax, chex, orbax-checkpoint, ml-collections, clu, absl-py, etils, tensorflow-datasets,
          tokamax) with their dependencies, as manylinux x86_64 wheels for CPython V [3.12], into DIR
          [wheels/, ignored by git]. What a JAX GPU image already has (jax, jaxlib, the CUDA plugins and
          NVIDIA libraries, numpy, scipy, ml_dtypes, opt_einsum), TensorFlow and pyarrow (too big to carry;
          only the real input pipeline needs them) are left out: ~41 MB for Python 3.12.
install   on the GPU machine: pip-installs every wheel in DIR without an index and without touching
          the preinstalled JAX (--no-deps).

One call on the device, the wheels carried with the working tree (carry: wheels):
  launch/device_wheels.sh install && python -m rlp_jax.benchmark --suite=accelerator
USAGE
}

[[ $# -ge 1 ]] || {
  usage >&2
  exit 2
}
case $1 in
  -h | --help)
    usage
    exit 0
    ;;
  download | install) mode=$1 ;;
  *) die "unknown command '$1' (download or install)" ;;
esac
shift
pyver=3.12
dir=$REPO_ROOT/wheels
while [[ $# -gt 0 ]]; do
  case $1 in
    --python-version) pyver=${2:?--python-version needs a value}; shift 2 ;;
    --python-version=*) pyver=${1#*=}; shift ;;
    --dir) dir=${2:?--dir needs a value}; shift 2 ;;
    --dir=*) dir=${1#*=}; shift ;;
    *) die "unknown option '$1'" ;;
  esac
done
PIP=${PIP:-python -m pip}

if [[ $mode == install ]]; then
  compgen -G "$dir/*.whl" >/dev/null || die "no wheels in $dir: run '$PROG download' where an index is reachable"
  # shellcheck disable=SC2086  # PIP is a command line
  $PIP install --no-index --no-deps "$dir"/*.whl
  exit 0
fi

# The pins of requirements.txt for these packages (one place for the versions).
names='flax|optax|chex|orbax-checkpoint|ml-collections|clu|absl-py|etils\[epath\]|tensorflow-datasets|tokamax'
mapfile -t pins < <(grep -E "^($names)==" "$REPO_ROOT/requirements.txt" | sed 's/[ ;].*//')
[[ ${#pins[@]} -gt 0 ]] || die "no pins found in requirements.txt"
mkdir -p "$dir"
# pip writes into a fresh temporary folder; only the kept wheels move to DIR, so the wheels a user already
# had there (whatever their names) stay as they were: none is deleted or overwritten (docs/design.md §5).
tmp=$(mktemp -d "${TMPDIR:-/tmp}/device_wheels.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
# Dependencies published only as source (tfds's promise): built into pure-Python wheels first, found there.
# shellcheck disable=SC2086
$PIP wheel --no-deps --wheel-dir "$tmp" promise==2.3
# shellcheck disable=SC2086
$PIP download --dest "$tmp" --find-links "$tmp" --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_28_x86_64 \
  "${pins[@]}"
# Left out: what the JAX image has, TensorFlow, and pyarrow (53 MB; tfds reads no Arrow datasets here): the
# rest is ~41 MB for Python 3.12, under the device tool's 64 MiB carry.
skip='^(jax|jaxlib|jax_cuda[0-9a-z_]*|jax_plugins|nvidia_[a-z0-9_]*|numpy|scipy|ml_dtypes|opt_einsum|tensorflow[a-z_]*|tf_keras|keras|pyarrow)-'
for f in "$tmp"/*.whl; do
  [[ -e $f ]] || continue
  if [[ ! $(basename "$f") =~ $skip ]]; then mv -n -- "$f" "$dir/"; fi
done
du -sh "$dir"
