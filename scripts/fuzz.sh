#!/bin/sh
# Fuzzes every parser of untrusted bytes (fuzz/README.md): builds the cargo-fuzz targets on
# the stable toolchain (no sanitizer, debug assertions and overflow checks on), then runs
# each from its seed corpus and prints, per target, the executions, executions per second,
# coverage (libFuzzer's final cov/ft) and crashes. Exits non-zero if any target crashed;
# the crashing inputs are under fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh short|long [TARGET...]
#   short  FUZZ_SECONDS (default 4) per target: the pass `make test` runs.
#   long   FUZZ_TOTAL_RUNS (default 10000000) executions in all, shared equally.
# Installs what it needs on Debian 12 (as root): g++ for libFuzzer, cargo-fuzz.
set -eu

cd "$(dirname "$0")/.."
mode=${1:-short}
[ $# -gt 0 ] && shift
case "$mode" in
    short | long) ;;
    *)
        echo "usage: $0 short|long [TARGET...]" >&2
        exit 2
        ;;
esac

./scripts/deps.sh build fuzz
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

# Stable Rust: no -Zsanitizer (`-s none`); the coverage instrumentation cargo-fuzz adds
# (-Cpasses=sancov-module, -Cllvm-args=-sanitizer-coverage-*) is stable. -a: overflow and
# debug assertions, so an overflow is a crash as in a debug build.
start=$(date +%s)
cargo fuzz build --release --debug-assertions --sanitizer none
built=$(date +%s)

if [ $# -gt 0 ]; then
    targets="$*"
else
    targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' fuzz/Cargo.toml | grep -v '^sealroot-fuzz$')
fi
n=$(echo "$targets" | wc -w)
triple=$(rustc -vV | sed -n 's/^host: //p')
bin=fuzz/target/$triple/release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

case "$mode" in
    short) limit="-max_total_time=${FUZZ_SECONDS:-4}" ;;
    long) limit="-runs=$(((${FUZZ_TOTAL_RUNS:-10000000} + n - 1) / n))" ;;
esac

printf '%-18s %12s %10s %7s %7s %6s %8s %7s\n' target execs execs/s cov ft corpus crashes seconds
total=0
crashed=0
for t in $targets; do
    if [ ! -x "$bin/$t" ]; then
        echo "fuzz: no target $t" >&2
        exit 2
    fi
    mkdir -p "$work/$t" "fuzz/artifacts/$t"
    before=$(ls "fuzz/artifacts/$t" | wc -l)
    t0=$(date +%s)
    # New inputs go to the scratch corpus (first directory); the seeds are only read.
    # -timeout: an input that takes 10 s is a finding (a hang); -rss_limit_mb likewise.
    rc=0
    "$bin/$t" "$work/$t" "fuzz/corpus/$t" $limit -print_final_stats=1 -timeout=10 \
        -rss_limit_mb=2048 -artifact_prefix="fuzz/artifacts/$t/" >"$work/$t.log" 2>&1 || rc=$?
    t1=$(date +%s)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log")
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t.log")
    last=$(grep -E '^#[0-9]+' "$work/$t.log" | tail -1)
    cov=$(echo "$last" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$last" | sed -n 's/.* ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$last" | sed -n 's/.* corp: \([0-9]*\).*/\1/p')
    crashes=$(($(ls "fuzz/artifacts/$t" | wc -l) - before))
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes=1 # died without writing an input (e.g. killed)
    fi
    printf '%-18s %12s %10s %7s %7s %6s %8s %7s\n' "$t" "${execs:-?}" "${speed:-?}" \
        "${cov:-?}" "${ft:-?}" "${corp:-?}" "$crashes" $((t1 - t0))
    total=$((total + ${execs:-0}))
    if [ "$crashes" -ne 0 ]; then
        crashed=$((crashed + 1))
        grep -E -m1 -A3 "panicked at|ERROR: libFuzzer|SUMMARY" "$work/$t.log" | sed 's/^/    /' >&2 || true
        cp "$work/$t.log" "fuzz/artifacts/$t/last-run.log"
        echo "    inputs: fuzz/artifacts/$t/ (replay: $bin/$t FILE); once fixed in src/, keep them under fuzz/regressions/$t/" >&2
    fi
done
end=$(date +%s)
echo "fuzz: $mode pass: $n targets, $total executions, build $((built - start)) s, runs $((end - built)) s, $crashed target(s) crashed"
[ "$crashed" -eq 0 ]
