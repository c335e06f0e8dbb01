#!/usr/bin/env bash
# Notebooks 01-04 on the binder profile under Binder's limits, as far as one machine can copy them:
# 2 GB of memory (a cgroup with memory limit 2 GiB: systemd-run where systemd is PID 1, else the
# cgroup v1 or v2 memory controller written directly, which needs root) and one core (taskset -c 0).
# First the step binder/postBuild runs (the profile's dataset), then 01-04 headless (papermill) in
# order, sharing one fresh runs folder, as a new Binder user would. One line per step: seconds, peak
# RSS of the largest process (the kernel), peak memory of the whole cgroup (page cache included, as
# the limit counts it) and whether the OOM killer fired. Usage: benchmarks/binder_limits.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$PWD/.venv/bin/python
OUT=${1:-$(mktemp -d /tmp/binder-limits.XXXX)}
LIMIT=$((2 * 1024 * 1024 * 1024))
export KIT_PROFILE=binder KIT_RUNS=$OUT/runs TQDM_DISABLE=1
mkdir -p "$OUT"

memory_cgroup() {  # prints a fresh cgroup folder limited to 2 GiB
    local v1=/sys/fs/cgroup/memory v2=/sys/fs/cgroup name="binder-limits-$$-$1"
    if [ -d $v1 ]; then
        mkdir "$v1/$name" && echo $LIMIT > "$v1/$name/memory.limit_in_bytes" && echo "$v1/$name"
    else
        mkdir "$v2/$name" && echo $LIMIT > "$v2/$name/memory.max" && echo 0 > "$v2/$name/memory.swap.max" && echo "$v2/$name"
    fi
}

cgroup_peak() {  # the cgroup's peak memory in bytes, then its OOM kills
    if [ -f "$1/memory.max_usage_in_bytes" ]; then
        echo "$(cat "$1/memory.max_usage_in_bytes") $(awk '$1 == "oom_kill" {print $2}' "$1/memory.oom_control")"
    else
        echo "$(cat "$1/memory.peak") $(awk '$1 == "oom_kill" {print $2}' "$1/memory.events")"
    fi
}

measure() {  # measure NAME COMMAND...: one line of results
    local name=$1 group; shift
    group=$(memory_cgroup "$name")
    local start=$SECONDS status=0
    sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$group" \
        taskset -c 0 /usr/bin/time -f "%M" -o "$OUT/$name.maxrss" "$@" > "$OUT/$name.log" 2>&1 || status=$?
    local seconds=$((SECONDS - start)) peak
    peak=$(cgroup_peak "$group")
    rmdir "$group"
    printf '%-28s %5d s  peak RSS %5d MiB  cgroup peak %5d MiB  OOM kills %s  exit %d\n' "$name" "$seconds" \
        $(($(tail -1 "$OUT/$name.maxrss") / 1024)) $((${peak% *} / 1048576)) "${peak#* }" "$status"
}

echo "binder profile, 2 GiB memory cgroup, taskset -c 0; logs in $OUT"
measure postBuild-dataset "$PY" -c "from patchgd_kit.runs.profiles import get_profile, profile_dataset; profile_dataset(get_profile(), progress=False)"
for notebook in notebooks/0[1-4]_*.ipynb; do
    name=$(basename "$notebook" .ipynb)
    measure "$name" "$PY" -m papermill "$notebook" "$OUT/$name.ipynb" -k python3 --cwd notebooks
done
# The same four with every kernel kept alive (a user who never shuts one down), in one 2 GiB cgroup,
# from a fresh runs folder again (the runs above would be read back instead of trained).
KIT_RUNS=$OUT/runs-kept measure kernels-kept-01-04 "$PY" benchmarks/binder_kept_kernels.py
cat "$OUT/kernels-kept-01-04.log"
