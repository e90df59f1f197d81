#!/usr/bin/env bash
# Runs the test suite N times (default 3) while two busy processes compete for the cores, and
# prints how many runs passed. A test that passes only on an idle machine fails here.
#
#   scripts/test-under-load.sh [N] [-- command ...]     (command defaults to: npm test)
#
# The load is stress-ng --cpu 2 (installed with apt-get when missing and possible), else two
# shell busy loops. It is started and ended by this script, by pid, and stops by itself after
# a bound even if this script is killed.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=3
if [ $# -gt 0 ] && [ "$1" != "--" ]; then
  runs=$1
  shift
fi
[ "${1:-}" = "--" ] && shift
command=("$@")
[ ${#command[@]} -gt 0 ] || command=(npm test)
case "$runs" in '' | *[!0-9]*) echo "usage: $0 [N] [-- command ...]" >&2; exit 2 ;; esac

# No run of the suite may take longer than this; the load lasts as long as all runs may.
run_limit_s=${TEST_UNDER_LOAD_RUN_LIMIT_S:-3600}
load_limit_s=$((runs * run_limit_s + 60))

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
if ! command -v stress-ng >/dev/null && command -v apt-get >/dev/null; then
  echo "installing stress-ng" >&2
  { as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends stress-ng; } >/dev/null 2>&1 ||
    echo "stress-ng could not be installed; using shell busy loops" >&2
fi

load_pids=()
load_name=
start_load() {
  if command -v stress-ng >/dev/null; then
    stress-ng --cpu 2 --timeout "${load_limit_s}s" --quiet &
    load_pids+=($!)
    load_name="stress-ng --cpu 2"
  else
    for _ in 1 2; do
      bash -c "end=\$((SECONDS + $load_limit_s)); while [ \$SECONDS -lt \$end ]; do :; done" &
      load_pids+=($!)
    done
    load_name="two shell busy loops"
  fi
}
stop_load() {
  for pid in "${load_pids[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${load_pids[@]}"; do wait "$pid" 2>/dev/null; done
  load_pids=()
}
trap stop_load EXIT
trap 'exit 130' INT TERM

start_load
echo "load: $load_name (pid ${load_pids[*]}); running '${command[*]}' $runs time(s)" >&2

passed=0
failed=0
for i in $(seq 1 "$runs"); do
  started=$SECONDS
  echo "=== run $i of $runs: ${command[*]}" >&2
  if timeout --kill-after=30 "$run_limit_s" "${command[@]}"; then
    passed=$((passed + 1))
    echo "=== run $i passed in $((SECONDS - started)) s" >&2
  else
    failed=$((failed + 1))
    echo "=== run $i FAILED after $((SECONDS - started)) s" >&2
  fi
done
stop_load
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
