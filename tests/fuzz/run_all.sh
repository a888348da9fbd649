#!/usr/bin/env bash
# Run every fuzz target for MINUTES each, then all again with numba's bounds checks compiled into
# the kernels (NUMBA_BOUNDSCHECK=1, cached apart in $NUMBA_CACHE_DIR, default /tmp/numba-bc);
# print each target's executions and findings.
#
#   tests/fuzz/run_all.sh MINUTES [OUT_DIR]      # $PYTHON: the interpreter (default: python)
#
# $FUZZ_TARGETS and $FUZZ_PASSES ("plain boundscheck") run fewer.
#
# Findings are recorded, not fatal ($LLMCODEC_FUZZ_FINDINGS, see harness.py): OUT_DIR/<pass>/<target>/
# holds corpus/, findings/ (inputs and README.txt, one line each) and artifacts/ (what ended a run:
# crash-*, timeout-*, oom-*). A run that ends early is started again with the time left.
set -uo pipefail
minutes=${1:?usage: run_all.sh MINUTES [OUT_DIR]}
here=$(cd "$(dirname "$0")" && pwd)
out=${2:-$(mktemp -d "${TMPDIR:-/tmp}/llmcodec-fuzz-XXXXXX")}
python=${PYTHON:-python}
seconds=$(awk -v m="$minutes" 'BEGIN { s = int(m * 60); print (s > 0 ? s : 1) }')
read -ra targets <<<"${FUZZ_TARGETS:-fuzz_open fuzz_encode fuzz_torch_load fuzz_slice fuzz_info}"
passes=${FUZZ_PASSES:-plain boundscheck}
export PYTHONPATH="$(cd "$here/../.." && pwd)${PYTHONPATH:+:$PYTHONPATH}"

run_target() {  # run_target TARGET PASS [VAR=VALUE...]
    local target=$1 pass=$2
    shift 2
    local dir="$out/$pass/$target"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    local deadline=$(($(date +%s) + seconds)) execs=0 runs=0 left n status
    while left=$((deadline - $(date +%s))) && ((left > 0 && runs < 100)); do
        env "$@" LLMCODEC_FUZZ_FINDINGS="$dir/findings" "$python" "$here/$target.py" "$dir/corpus" \
            -max_total_time="$left" -print_final_stats=1 -artifact_prefix="$dir/artifacts/" \
            >"$dir/log.$runs" 2>&1
        status=$?
        n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/log.$runs" | tail -1)
        execs=$((execs + ${n:-0}))
        runs=$((runs + 1))
        ((status == 0)) && break
    done
    local kinds=0 inputs=0 artifacts
    if [[ -f "$dir/findings/README.txt" ]]; then
        kinds=$(cut -d'|' -f2 "$dir/findings/README.txt" | sort -u | wc -l)
        inputs=$(wc -l <"$dir/findings/README.txt")
    fi
    artifacts=$(find "$dir/artifacts" -type f | wc -l)
    printf '%-16s %-11s %9d executions in %d run(s); findings: %d kinds (%d inputs kept), %d crash/timeout/oom artifacts\n' \
        "$target" "$pass" "$execs" "$runs" "$kinds" "$inputs" "$artifacts"
}

echo "results in $out"
if [[ " $passes " == *" plain "* ]]; then
    for target in "${targets[@]}"; do
        run_target "$target" plain
    done
fi
if [[ " $passes " == *" boundscheck "* ]]; then
    for target in "${targets[@]}"; do
        run_target "$target" boundscheck NUMBA_BOUNDSCHECK=1 NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-/tmp/numba-bc}"
    done
fi
for readme in "$out"/*/*/findings/README.txt; do
    [[ -f "$readme" ]] || continue
    echo "== $readme"
    cut -c1-300 "$readme"
done
