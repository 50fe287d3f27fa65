# shellcheck shell=bash
# Helpers shared by the launchers (sourced, not run): quoting, checks of user values, dry-run execution, errors.
#
# Every user value ends up inside generated shell code (slurm.sh's job script, tpu.sh's remote --command,
# the lines sweep.sh evaluates), so each one is either checked against a strict pattern (names, numbers) or
# written quoted with shq; control characters are refused everywhere, since a newline on a #SBATCH line or
# in a line that sweep.sh reads would start a new command (docs/design.md §5, "Launchers").

# die MESSAGE...: the user error in one line, "error: MESSAGE", on stderr; exit status 2 (as the Python
# commands do, rlp_jax/infra/errors.py).
die() {
  printf 'error: %s\n' "$*" >&2
  exit 2
}

# show VALUE: VALUE quoted, in one line, for an error message (a newline shows as $'\n').
show() {
  if [[ $1 == *[[:cntrl:]]* ]]; then printf '%q' "$1"; else single_quote "$1"; fi
}

# shq WORD: WORD quoted for a POSIX shell (the remote shell of a TPU worker need not be bash). An option
# "--flag=VALUE" keeps "--flag=" bare and quotes only VALUE (--command='...'). NAME=VALUE is quoted whole:
# bare, it would be an assignment, not a word.
shq() {
  if [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
    single_quote "$1"
  elif [[ $1 =~ ^(--[A-Za-z0-9][A-Za-z0-9_.-]*=)(.*)$ ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
    quote_value "${BASH_REMATCH[2]}"
  else
    quote_value "$1"
  fi
}

# quote_value VALUE: VALUE bare when it holds only characters that no shell treats specially, else quoted.
quote_value() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    single_quote "$1"
  fi
}

# single_quote WORD: 'WORD', each ' in it written as '\''; nothing inside single quotes is special.
single_quote() {
  local q="'" esc="'\\''"
  printf "'%s'" "${1//$q/$esc}"
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

# check_text OPTION VALUE...: refuse control characters (newline, carriage return, tab, ...) in VALUEs.
check_text() {
  local opt=$1 v
  shift
  for v in "$@"; do
    [[ $v != *[[:cntrl:]]* ]] || die "$opt: control characters (newline, tab, ...) are not allowed, got $(show "$v")"
  done
}

# check_word OPTION VALUE: refuse whitespace and control characters, for values written unquoted where a
# space would split them (#SBATCH lines), and a leading '-', which a command would take for an option.
check_word() {
  check_text "$1" "$2"
  [[ $2 != *[[:space:]]* ]] || die "$1: whitespace is not allowed, got $(show "$2")"
  [[ $2 != -* ]] || die "$1: must not start with '-', got $(show "$2")"
}

# check_env_assignment VAR=VALUE: the form --env takes; VAR must be a shell identifier, VALUE may be anything.
check_env_assignment() {
  [[ $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] ||
    die "--env: expects VAR=VALUE with VAR a name of letters, digits and '_' (not starting with a digit), got $(show "$1")"
}

# env_assignments VAR=VALUE...: shell words that set each VAR to exactly VALUE (VAR checked, VALUE quoted).
env_assignments() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }${a%%=*}=$(quote_value "${a#*=}")"
  done
  printf '%s' "$out"
}

# check_config_file OPTION FILE[:ARG] BASE_DIR: the file part must exist (relative paths under BASE_DIR), as
# python -m rlp_jax.main would find out only on the cluster, after the job has waited in the queue.
check_config_file() {
  local file=${2%%:*} path
  path=$file
  [[ $path == /* ]] || path=$3/$path
  [[ -f $path ]] || die "$1: the config file $(show "$file") does not exist (looked for $(show "$path")); pass an existing FILE[:ARG], e.g. configs/digits.py"
}

# Arguments after -- go to rlp_jax.main; a --dry-run there would really launch, so refuse it.
check_no_dry_run_after_dashdash() {
  local a
  for a in "$@"; do [[ $a != --dry-run ]] || die "--dry-run: after -- it would go to rlp_jax.main and launch for real; put it before --"; done
}

# need_value OPTION VALUE: fail unless VALUE is non-empty (for "--opt VALUE" options given without a value).
need_value() {
  [[ -n ${2:-} ]] || die "$1: needs a value"
}

# require OPTION VALUE [HINT]: fail naming OPTION when VALUE is empty.
require() {
  [[ -n ${2:-} ]] || die "$1: missing required option${3:+ ($3)}"
}
