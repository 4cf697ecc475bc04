#!/usr/bin/env bash
# A/B of two commits with the comparison example, runs interleaved (A B A B ...) so a noisy
# neighbour hits both alike. Prints each run's rows for both, base first.
#
#   scripts/ab.sh BASE_COMMIT RUNS -- ARGS...   e.g.   scripts/ab.sh 11efa1b 5 -- --only S4
#
# BASE is built in a git worktree under target/ab/; the other side is the working tree.
set -euo pipefail
base=$1 runs=$2
shift 2
[ "${1:-}" = "--" ] && shift
root=$(git rev-parse --show-toplevel)
tree="$root/target/ab/$base"
if [ ! -d "$tree" ]; then
    git -C "$root" worktree add --detach "$tree" "$base" >/dev/null
fi
(cd "$tree" && cargo build -q --release --example compare)
(cd "$root" && cargo build -q --release --example compare)
a="$tree/target/release/examples/compare"
b="$root/target/release/examples/compare"
for run in $(seq "$runs"); do
    echo "== run $run: base $base"
    (cd "$tree" && "$a" "$@")
    echo "== run $run: $(git -C "$root" rev-parse --short HEAD)+worktree"
    (cd "$root" && "$b" "$@")
done
