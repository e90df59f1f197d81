#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one after another, each in a single libFuzzer process
# (one core), and prints what each run did. Not part of `npm test` or CI: run it by hand.
#
#   scripts/fuzz.sh                      every target, 600 s each
#   scripts/fuzz.sh -t 60 token proxy_v1  the named targets, 60 s each
#   FUZZ_SECONDS=30 scripts/fuzz.sh       same as -t 30
#
# Needs the nightly toolchain (cargo-fuzz uses sanitizer flags only nightly has); on a fresh
# machine: `rustup toolchain install nightly`. cargo-fuzz itself is installed on first use.
#
# Corpora grow in fuzz/corpus/<target> (seeded from the small fuzz/seeds/<target>), crash
# inputs land in fuzz/artifacts/<target>, the libFuzzer output of each run in
# fuzz/logs/<target>.log; all three stay out of git. Exits non-zero if any target crashed
# (or failed to build or run).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
fuzz_dir="$root/fuzz"
seconds="${FUZZ_SECONDS:-600}"

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -t | --seconds)
      [ $# -ge 2 ] || usage 2
      seconds="$2"
      shift 2
      ;;
    -h | --help) usage 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; usage 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
case "$seconds" in
  '' | *[!0-9]* | 0) echo "fuzz.sh: seconds must be a positive integer, got '$seconds'" >&2; exit 2 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is missing; install it with: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd "$fuzz_dir"
mapfile -t known < <(cargo +nightly fuzz list)
if [ ${#targets[@]} -eq 0 ]; then
  targets=("${known[@]}")
fi
for target in "${targets[@]}"; do
  if ! printf '%s\n' "${known[@]}" | grep -qx -- "$target"; then
    echo "fuzz.sh: unknown target '$target' (known: ${known[*]})" >&2
    exit 2
  fi
done

# One build for all targets, so the timed runs below are fuzzing only.
cargo +nightly fuzz build

mkdir -p logs
failed=0
results=()
for target in "${targets[@]}"; do
  corpus="corpus/$target"
  artifacts="artifacts/$target"
  log="logs/$target.log"
  mkdir -p "$corpus" "$artifacts"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  echo "== $target: ${seconds}s (log: fuzz/$log)"
  start=$(date +%s)
  status=0
  # -timeout: an input that takes this long counts as a hang (a crash).
  cargo +nightly fuzz run "$target" "$corpus" "${seeds[@]}" -- \
    -max_total_time="$seconds" -timeout=25 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  elapsed=$(($(date +%s) - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  corpus_files=$(find "$corpus" -type f | wc -l)
  crashes=$(find "$artifacts" -type f -newermt "@$start" | wc -l)
  if [ "$status" -eq 0 ] && [ "$crashes" -eq 0 ]; then
    verdict=ok
  else
    verdict="FAILED (exit $status, $crashes new artifact(s))"
    failed=1
    grep -m 5 -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | sed 's/^/   /' || true
  fi
  line=$(printf '%-14s %6ss %12s execs %6s corpus  %s' "$target" "$elapsed" "${execs:-?}" "$corpus_files" "$verdict")
  echo "$line"
  results+=("$line")
done

echo
echo "== summary (${seconds}s per target)"
printf '%s\n' "${results[@]}"
exit "$failed"
