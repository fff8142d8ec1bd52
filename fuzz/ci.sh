#!/usr/bin/env bash
# CI's short fuzz step (called by .ci/run): every target for NSBOX_CI_FUZZ_SECONDS (default
# 30) seconds, starting from its kept corpus; a crash fails CI and leaves its input in
# fuzz/artifacts/TARGET/. Needs a nightly toolchain and cargo-fuzz: installed through rustup
# and cargo when missing. Without rustup (no way to get nightly), the step says SKIP loudly.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${NSBOX_CI_FUZZ_SECONDS:-30}
if ! cargo +nightly --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null; then
    # No internet but the package registries on some runners: a toolchain that cannot be
    # fetched is a loud SKIP of this step, not a failed CI (the corpora still replay nowhere
    # else, so say it plainly).
    rustup toolchain install nightly --profile minimal >/dev/null ||
      { echo "SKIP fuzz: rustup could not install a nightly toolchain" >&2; exit 0; }
  else
    echo "SKIP fuzz: no nightly toolchain and no rustup to install one" >&2
    exit 0
  fi
fi
command -v cargo-fuzz >/dev/null || cargo install --locked -q cargo-fuzz ||
  { echo "SKIP fuzz: cargo-fuzz could not be installed" >&2; exit 0; }
# -s none: safe Rust, so a panic or failed assertion is the finding (see README.md here).
cargo +nightly fuzz build -s none
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  # The kept corpus is the seed; what the run adds goes to a scratch copy, not the checkout.
  scratch=$(mktemp -d)
  cp -r "corpus/$target/." "$scratch/"
  echo "fuzz $target: ${seconds}s" >&2
  status=0
  cargo +nightly fuzz run -s none "$target" "$scratch" -- \
    -max_total_time="$seconds" -rss_limit_mb=1024 -print_final_stats=1 \
    >"$scratch.log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|SUMMARY)|panicked' "$scratch.log" >&2 || true
  [ "$status" -eq 0 ] || tail -40 "$scratch.log" >&2
  rm -f "$scratch.log"
  rm -rf "$scratch"
  [ "$status" -eq 0 ] || { echo "fuzz $target found a crash: see fuzz/artifacts/$target" >&2; exit 1; }
done
