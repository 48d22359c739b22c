#!/usr/bin/env bash
# The main job on the embedded local stack: bring the stack up, run the operator, roll out a clean, a gate-caught
# backdoored and a live-caught backdoored candidate of the classifier and watch them. Everything started here is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
export MODELROLLOUT_STATE_DIR="$PWD/.devstack"
mr=.venv/bin/modelrollout
# On its own line, so that a failed `dev up` stops here (inside eval "$(...)" set -e does not see it), and the
# trap only once this stack is up (a refused `dev up` must not stop another stack running from the same place).
env_lines=$("$mr" dev up)
cleanup() { "$mr" dev down; }
trap cleanup EXIT
eval "$env_lines"
"$mr" dev demo
