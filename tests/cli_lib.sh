# cli_lib.sh — what the command-line test scripts share (sourced): their
# arguments, a scratch folder removed on exit, and the counting checks.
#   bin: the attnprobe executable ($1); fixtures: tests/fixtures ($2)
set -u
bin=$1
fixtures=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
passed=0 failed=0
ok() { passed=$((passed + 1)); echo "ok: $1"; }
bad() { failed=$((failed + 1)); echo "FAIL: $1"; }
expect_exit() { # code description command...
  local want=$1 what=$2
  shift 2
  "$@" > out.txt 2> err.txt
  local got=$?
  if [ "$got" = "$want" ]; then ok "$what (exit $got)"; else bad "$what: exit $got, want $want: $(cat err.txt)"; fi
}
# The closing line ctest's readers count, and the script's status.
finish() {
  echo "$passed passed, $failed failed"
  [ "$failed" = 0 ]
}
