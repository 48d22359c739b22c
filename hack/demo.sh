#!/usr/bin/env bash
# The main job on the embedded local stack: bring the stack up, run the operator, apply the sample
# ModelRollout and watch it. Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
export MODELROLLOUT_STATE_DIR="$PWD/.devstack"
mr=.venv/bin/modelrollout
operator_pid=""
cleanup() {
  [[ -n "$operator_pid" ]] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null
  "$mr" dev down
}
trap cleanup EXIT
eval "$("$mr" dev up)"
"$mr" operator run >"$MODELROLLOUT_STATE_DIR/operator.log" 2>&1 &
operator_pid=$!
kubectl create namespace moderation --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl apply -n moderation -f examples/nsfw-classifier.yaml
for _ in $(seq 1 "${DEMO_SECONDS:-30}"); do
  sleep 1
  phase=$(kubectl get mro nsfw-classifier -n moderation -o jsonpath='{.status.phase}')
  [[ -n "$phase" ]] && break
done
kubectl get mro -n moderation -o wide
kubectl get mro nsfw-classifier -n moderation -o jsonpath='{range .status.history[*]}{.time}  {.event}  {.detail}{"\n"}{end}'
