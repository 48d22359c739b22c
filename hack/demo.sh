#!/usr/bin/env bash
# The main job on the embedded local stack: bring the stack up, run the operator, roll out a clean, a gate-caught
# backdoored and a live-caught backdoored candidate of the classifier and watch them. Everything started here is
# stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
export MODELROLLOUT_STATE_DIR="$PWD/.devstack"
mr=.venv/bin/modelrollout
# The traps are set before `dev up` starts: a kill or a closed terminal during the 20-40 s start must stop it too.
up="" demo="" stack_up="" up_out=""
cleanup() {
  trap '' INT TERM HUP  # a second Ctrl-C or kill must not cut `dev down` short and leave the stack up
  if [[ -n $up ]]; then
    # Still starting: `dev up` stops what it started on SIGTERM (as a background job it ignores Ctrl-C itself).
    kill -TERM "$up" 2>/dev/null || true
    # It exits 0 only with the stack up: it had got that far (once up, it ignores the kill), so stop the stack too.
    # Its environment lines, written only then, tell it as well: when the signal came as the wait below returned,
    # this wait can fail though `dev up` exited 0 (bash 5.2 gives -1 for a child the other wait reaped).
    if wait "$up" || [[ -s $up_out ]]; then stack_up=1; fi
  fi
  if [[ -n $up_out ]]; then rm -f "$up_out"; fi
  if [[ -n $demo ]]; then
    # The demo stops its operator and model servers before the stack they use goes away.
    kill -TERM "$demo" 2>/dev/null || true
    wait "$demo" || true
  fi
  # Only a stack this script brought up: a refused `dev up` must not stop another run's stack in the same place.
  if [[ -n $stack_up ]]; then "$mr" dev down; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
up_out=$(mktemp)
# In the background and waited for, as the demo below: a signal to this script interrupts the wait, and the EXIT
# trap passes it on. Its output into a file: `$(...)` would hold the signal until `dev up` ended.
"$mr" dev up >"$up_out" &
up=$!
up_status=0
wait "$up" || up_status=$?
((up_status != 0)) || stack_up=1
up=""  # reaped: its PID may name another process now
((up_status == 0)) || exit "$up_status"
env_lines=$(<"$up_out")
# Gone now: a `kill -9` of this script runs no EXIT trap.
rm -f "$up_out"
up_out=""
eval "$env_lines"
# In the background and waited for: a signal to this script interrupts the wait, and the EXIT trap passes it on to
# the demo (which, as a background job, ignores Ctrl-C itself) and waits for it before `dev down`.
"$mr" dev demo &
demo=$!
status=0
wait "$demo" || status=$?
demo=""  # reaped: its PID may name another process now
exit "$status"
