#!/usr/bin/env bash
# Parts of one quality recipe (benchmarks/search_quality.py --methods/--seeds) as parallel processes sharing one
# runs folder: on one GPU, a CIFAR ResNet-20 run leaves most of the chip idle, so several fill it. Each part stops
# after LIMIT_S seconds (SIGTERM: a retraining checkpoints and resumes next time; a search resumes from its last
# epoch checkpoint). Afterwards, the whole recipe on the same runs folder reuses what the parts finished and
# writes the report, which lists the parts' invocations. Each part logs to RUNS/logs/<part>.log and writes its own
# partial report where search_quality.py puts a part's (RUNS/parts/).
#   bash benchmarks/gpu_quality.sh RECIPE RUNS LIMIT_S [METHOD[:SEED,SEED...] ...] [-- OPTION ...]
# Parts of one searched method (e.g. aps:0 aps:1) share its search: the first part to check for it holds it until
# its result is written, and the others wait (one line naming that process) and then reuse it; the same for each
# retraining. With no parts given, one process per method.
# Options after `--` go to every part's search_quality.py (e.g. `-- --searches-from RUNS_5EP`).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ $# -ge 3 ] || { echo "usage: bash benchmarks/gpu_quality.sh RECIPE RUNS LIMIT_S [METHOD[:SEEDS] ...] [-- OPTION ...]" >&2
                  exit 2; }
recipe=$1 runs=$2 limit=$3
shift 3
parts=() options=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do parts+=("$1"); shift; done
[ $# -gt 0 ] && shift && options=("$@")
if [ ${#parts[@]} -eq 0 ]; then
  mapfile -t parts < <(python -c "import sys; sys.path.insert(0, 'benchmarks'); import search_quality as q
print('\n'.join(q.load_quality_recipe(sys.argv[1])[1].methods))" "$recipe") || exit 2
fi
mkdir -p "$runs/logs"
pids=()
for part in "${parts[@]}"; do
  method=${part%%:*} seeds=
  [ "$method" != "$part" ] && seeds=${part#*:}
  tag=$(tr ':,' '_-' <<<"$part")
  timeout "$limit" python benchmarks/search_quality.py "$recipe" --runs "$runs" \
    --methods "$method" ${seeds:+--seeds "$seeds"} "${options[@]}" >"$runs/logs/$tag.log" 2>&1 &
  pids+=($!)
done
status=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; rc=$?
  echo "${parts[$i]}: exit $rc$([ $rc -eq 124 ] && echo ' (stopped at the time limit)')"
  [ $rc -eq 0 ] || [ $rc -eq 124 ] || status=1
done
exit $status
