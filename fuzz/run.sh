#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, JOBS at a time, on its committed
# corpus; fails if any target crashes (the input is left under fuzz/artifacts/<target>/).
# Prints one line per target: executions, coverage, corpus size.
#   fuzz/run.sh SECONDS [JOBS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:?seconds per target}
jobs=${2:-1}
shift $(($# > 1 ? 2 : 1))
targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo fuzz list)
fi
# No sanitizer: the code under test is safe Rust; -s none needs no nightly toolchain.
RUSTC_BOOTSTRAP=1 cargo fuzz build -s none "${targets[@]:0:0}" >/dev/null
logs=${FUZZ_LOGS:-target/run-logs}
mkdir -p "$logs"
run() {
  local t=$1
  if RUSTC_BOOTSTRAP=1 cargo fuzz run -s none "$t" -- -max_total_time="$secs" -print_final_stats=1 \
      >"$logs/$t.log" 2>&1; then
    local done_line
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$logs/$t.log" | tail -1)
    printf '%-16s %s\n' "$t" "$done_line"
  else
    printf '%-16s CRASHED: see fuzz/%s/%s.log\n' "$t" "$logs" "$t"
    tail -30 "$logs/$t.log" >&2
    return 1
  fi
}
export -f run
export secs logs
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run {}'
