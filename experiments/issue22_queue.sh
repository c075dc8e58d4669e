#!/usr/bin/env bash
# Issue 22's long CPU runs, one at a time, one torch thread, most informative first. Every step skips what is
# finished and resumes what was killed, so running this script again continues where it stopped.
#   usage: experiments/issue22_queue.sh [RESULTS]   (RESULTS: where results go, default this tree's experiments/results)
# Run it from a snapshot of the tree (git worktree add /work/snap-science HEAD) with RESULTS an absolute path into
# the working tree, e.g.:
#   cd /work/snap-science && nohup experiments/issue22_queue.sh /work/main/experiments/results \
#       > /work/main/experiments/results/issue22_queue.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
RESULTS=${1:-$PWD/experiments/results}
DATA=${SRR_DATA_DIR:-/work/shared/data/cifar10}
G="python -m experiments.generalization --threads 1 --data-dir $DATA --out $RESULTS/generalization"
R="python -m experiments.regularization_recipe --threads 1 --data-dir $DATA"
step() { echo "=== $(date -u '+%F %T') UTC: $*"; "$@" || echo "=== step failed (rc $?): $*"; }
step $G --widths 128 --seeds 0          # d = 128 grid, seed 0: tau at the second width
step $G --widths 64 --seeds 0           # d = 64 seed 0 retrained for its eigenvalues: tau(eps) at d = 64
step $G --widths 128 --seeds 1          # d = 128 seed 1: the noise ceiling at d = 128
step $G --widths 64 --seeds 1           # d = 64 seed 1 eigenvalues
step $R --out $RESULTS/regularization_recipe --seeds 0 1 2 --arms ce hu24 eps1   # section 3, 9 runs
step $R --tost-tied --out $RESULTS/cifar_recipe_tost_tied --seeds 0              # section 4
echo "=== $(date -u '+%F %T') UTC: queue done"
