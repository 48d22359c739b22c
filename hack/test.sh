#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs, lints, then runs pytest
# against the real kube-apiserver + etcd, mlflow server and Prometheus that the tests start.
set -euo pipefail
cd "$(dirname "$0")/.."
hack/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
