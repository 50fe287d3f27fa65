# shellcheck shell=bash
# Helpers shared by the launchers (sourced, not run): quoting, dry-run execution, errors.

# die MESSAGE...: print "<script>: error: MESSAGE" and the usage hint to stderr, exit 2.
die() {
  printf '%s: error: %s\n' "${PROG:-launch}" "$*" >&2
  printf "Run '%s --help' for usage.\n" "${PROG:-launch}" >&2
  exit 2
}

# shq WORD: WORD quoted for a POSIX shell; left bare when it holds only characters that need no quoting.
# An option "--flag=VALUE" keeps "--flag=" bare and quotes only VALUE (--command='...').
shq() {
  local s=$1 q="'" esc="'\\''" safe='^[A-Za-z0-9_./:=,@%+-]+$'
  if [[ -n $s && $s =~ $safe ]]; then
    printf '%s' "$s"
  elif [[ $s =~ ^(--[A-Za-z0-9][A-Za-z0-9_.-]*=)(.*)$ ]]; then
    local flag=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
    printf "%s'%s'" "$flag" "${value//$q/$esc}"
  else
    printf "'%s'" "${s//$q/$esc}"
  fi
}

# quote_args ARG...: the arguments as one shell command line, each quoted with shq.
quote_args() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(shq "$a")"
  done
  printf '%s' "$out"
}

# run_cmd ARG...: with DRY_RUN=1 print the exact command line on stdout; otherwise echo it to stderr and run it.
run_cmd() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%s\n' "$(quote_args "$@")"
  else
    printf '+ %s\n' "$(quote_args "$@")" >&2
    "$@"
  fi
}

# need_value OPTION VALUE: fail unless VALUE is non-empty (for "--opt VALUE" options given without a value).
# --env VAR=VALUE: refuse anything that is not an assignment.
check_env_assignment() {
  [[ $1 == [A-Za-z_]*=* ]] || die "--env expects VAR=VALUE, got '$1'"
}

# Arguments after -- go to rlp_jax.main; a --dry-run there would really launch, so refuse it.
check_no_dry_run_after_dashdash() {
  local a
  for a in "$@"; do [[ $a != --dry-run ]] || die "--dry-run after -- would go to rlp_jax.main: put it before --"; done
}

need_value() {
  [[ -n ${2:-} ]] || die "option $1 needs a value"
}

# require OPTION VALUE [HINT]: fail naming OPTION when VALUE is empty.
require() {
  [[ -n ${2:-} ]] || die "missing required option $1${3:+ ($3)}"
}
