#!/usr/bin/env bash
# What the step guard (engine/step_guard.py) costs a CPU training step: the quick preset's steps
# (benchmarks/budget_estimate.py) timed with the code before it and with HEAD, alternating, in
# fresh processes, on the same machine.
#
#   bash benchmarks/step_guard_overhead.sh [BASE_COMMIT] [ROUNDS] > benchmarks/results/step_guard_overhead-<cpu>.txt
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:-92f5269}
rounds=${2:-2}
tree=$(mktemp -d)
git worktree add --quiet --detach "$tree" "$base"
trap 'git worktree remove --force "$tree"' EXIT
lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'
for round in $(seq "$rounds"); do
    for which in before after; do
        src=$([ "$which" = before ] && echo "$tree/src" || echo "$PWD/src")
        echo "== round $round, $which ($([ "$which" = before ] && echo "$base" || git rev-parse --short HEAD))"
        PYTHONPATH="$src" .venv/bin/python "$([ "$which" = before ] && echo "$tree" || echo .)/benchmarks/budget_estimate.py" \
            --preset quick --steps 40 | grep -E "^steps|^[a-z0-9_]+, "
    done
done
