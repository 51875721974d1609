#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each and prints libFuzzer's figures.
#   bash fuzz/run.sh [seconds per target] [target ...]      (default: 60 s, every target)
# The committed seeds (fuzz/corpus/<target>) are read, never written: what a run discovers
# goes to a work corpus in the cache folder, kept between runs on one machine. A crash stops
# the script with the input saved under the work folder's artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(token check jwe jwks policy)
fi

CACHE="${TOLLGATE_TEST_CACHE:-$HOME/.cache/tollgate-test}"
FUZZ_VERSION=0.13.2
fuzz_root="$CACHE/cargo-fuzz-$FUZZ_VERSION"
if [ ! -x "$fuzz_root/bin/cargo-fuzz" ]; then
  echo "installing cargo-fuzz $FUZZ_VERSION into $fuzz_root"
  cargo install --quiet --locked cargo-fuzz --version "$FUZZ_VERSION" --root "$fuzz_root"
fi
export PATH="$fuzz_root/bin:$PATH"
# cargo-fuzz needs unstable compiler flags; the machine has only the stable toolchain.
export RUSTC_BOOTSTRAP=1

target_dir=()
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  target_dir=(--target-dir "$CARGO_TARGET_DIR/fuzz")
fi
work="${TOLLGATE_FUZZ_WORK:-$CACHE/fuzz-work}"

# Without a sanitizer: tollgate forbids unsafe code, and the C inside aws-lc is not
# instrumented by cargo-fuzz anyway; coverage-guided search runs about 5x faster.
cargo fuzz build -s none -O "${target_dir[@]}"

for target in "${targets[@]}"; do
  mkdir -p "$work/$target" "$work/artifacts/$target"
  log="$work/$target.log"
  echo "fuzzing $target for ${seconds}s"
  if ! cargo fuzz run -s none -O "${target_dir[@]}" "$target" "$work/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="$work/artifacts/$target/" -print_final_stats=1 > "$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz target $target FAILED; the input is under $work/artifacts/$target/"
    exit 1
  fi
  # The last status line (coverage, features, corpus) and the totals.
  grep -E "^#[0-9]+" "$log" | tail -n 1 || true
  grep -E "stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)" "$log" | tr '\n' ' '
  echo
done
