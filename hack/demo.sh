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
# traps only once this stack is up (a refused `dev up` must not stop another stack running from the same place).
env_lines=$("$mr" dev up)
demo=""
cleanup() {
  trap '' INT TERM HUP  # a second Ctrl-C or kill must not cut `dev down` short and leave the stack up
  if [[ -n $demo ]]; then
    # The demo stops its operator and model servers before the stack they use goes away.
    kill -TERM "$demo" 2>/dev/null || true
    wait "$demo" || true
  fi
  "$mr" dev down
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
eval "$env_lines"
# In the background and waited for: a signal to this script interrupts the wait, and the EXIT trap passes it on to
# the demo (which, as a background job, ignores Ctrl-C itself) and waits for it before `dev down`.
"$mr" dev demo &
demo=$!
status=0
wait "$demo" || status=$?
demo=""  # reaped: its PID may name another process now
exit "$status"
