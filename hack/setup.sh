#!/usr/bin/env bash
# Installs everything the stack and the tests need on a fresh Debian machine: Debian's Prometheus (and openssl,
# chromium, python3-venv when missing; kubectl 1.27+ must be there already), the Python package in .venv,
# kube-apiserver + etcd built from pinned Go modules, and pinned Helm and kustomize.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests use `kubectl patch --subresource` (1.24+), `apply --validate=strict` (1.25+) and `auth whoami` (1.27+).
# Not installed from Debian: its kubernetes-client is 1.20. Checked first, before anything is installed.
kubectl_minor=$(kubectl version --client -o json 2>/dev/null \
  | python3 -c 'import json, sys; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")))' \
  2>/dev/null) || kubectl_minor=0
if [[ ! $kubectl_minor =~ ^[0-9]+$ ]] || ((kubectl_minor < 27)); then
  echo "error: kubectl 1.27 or newer is needed (found: $(kubectl version --client 2>&1 | head -n1));" \
    "install it from https://pkgs.k8s.io (Debian's kubernetes-client is too old)" >&2; exit 1
fi

need_apt=()
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# Headless Chromium renders `explain --html` in the tests.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# Debian's own python3 makes virtual environments only with python3-venv.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: missing ${need_apt[*]}: run as root or install them with apt-get" >&2; exit 1
  fi
  apt-get update -qq
  # Debian's prometheus postinst would start prometheus.service on 0.0.0.0:9090: a policy-rc.d that answers 101
  # stops any service start during the install. Ours only, removed on any exit; one already there is kept.
  policy_rc=/usr/sbin/policy-rc.d
  made_policy_rc=
  if [[ ! -e $policy_rc ]]; then
    trap 'rm -f "$policy_rc"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM HUP
    made_policy_rc=1
    printf '#!/bin/sh\n# hack/setup.sh: no service starts while it installs packages\nexit 101\n' >"$policy_rc"
    chmod 755 "$policy_rc"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  if [[ $made_policy_rc ]]; then
    rm -f "$policy_rc" && trap - EXIT INT TERM HUP
  fi
  # The package is also enabled for the next boot; the stack runs its own Prometheus on loopback.
  if [[ " ${need_apt[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# A venv whose creation was cut short has python but no pip: made again, never trusted.
if [[ ! -x .venv/bin/python ]] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  python3 -m venv --clear .venv
fi
# Reinstalled whenever pyproject.toml changes.
stamp=".venv/.pyproject-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  if ! (.venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]') >.venv/pip.log 2>&1; then
    echo "error: pip install failed: $(grep -m1 -i error .venv/pip.log || tail -n1 .venv/pip.log) (log: .venv/pip.log)" >&2
    exit 1
  fi
  rm -f .venv/.pyproject-* && touch "$stamp"
fi

# Prints the directory of kube-apiserver and etcd (cached by version outside the repo).
hack/controlplane/build.sh >/dev/null
# Pinned Helm and kustomize for the deploy tests, cached outside the repo by version.
hack/install-tools.sh >/dev/null
