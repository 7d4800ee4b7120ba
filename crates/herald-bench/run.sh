# Sourced by scenarios.sh and cluster.sh: `run NAME ARGS…` runs `herald-bench --json ARGS…`
# once on core 1 (inside "${NS[@]}" when the caller set it), bounded, and appends
# {"scenario":NAME,"result":…} to $results. A run that fails or hangs is reported as
# failed, its stderr kept as $out/$errs-N.err. The caller sets bin, out, results, errs.
runs=0
run() {
    local name=$1 line
    shift
    echo "== $name: herald-bench $*"
    runs=$((runs + 1))
    line=$(timeout 300 ${NS[@]+"${NS[@]}"} taskset -c 1 "$bin/herald-bench" --json "$@" 2>"$out/$errs-$runs.err") ||
        { echo "   failed (see $out/$errs-$runs.err)"; return 0; }
    echo "{\"scenario\":\"$name\",\"result\":$line}" >>"$results"
}
