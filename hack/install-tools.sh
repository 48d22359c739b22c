#!/usr/bin/env bash
# Installs the pinned Helm and kustomize with `go install`, cached outside the repo by version
# (one directory per tool and version, so a version bump never reuses a stale binary).
# Prints the directory to put on PATH; both binaries are linked there.
# Honours MODELROLLOUT_CACHE / XDG_CACHE_HOME like hack/controlplane/build.sh.
set -euo pipefail

HELM_VERSION="v3.22.0"
KUSTOMIZE_VERSION="v5.8.2"  # v5.8.3 needs go >= 1.27

cache_root="${MODELROLLOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelrollout}"
tools="$cache_root/bin/tools"
bin="$tools/bin-helm-${HELM_VERSION}-kustomize-${KUSTOMIZE_VERSION}"

# install_tool NAME VERSION PACKAGE [LDFLAGS]: go install PACKAGE@VERSION into $tools/NAME-VERSION/NAME unless present.
install_tool() {
  local name="$1" version="$2" package="$3" ldflags="-s -w ${4:-}"
  local dir="$tools/$name-$version"
  if [[ -x "$dir/$name" ]]; then
    return 0
  fi
  if ! command -v go >/dev/null 2>&1; then
    echo "error: the Go toolchain (1.26 or later) is needed to install $name $version with go install $package@$version; install Go and run this again" >&2
    exit 1
  fi
  rm -rf "$dir.partial" && mkdir -p "$dir.partial"
  local log="$dir.partial/install.log" start
  start=$(date +%s)
  # GOBIN keeps the binary out of ~/go/bin; GOWORK=off so a go.work around the caller cannot change the build.
  if ! GOBIN="$dir.partial" GOWORK=off go install -trimpath -ldflags "$ldflags" "$package@$version" >"$log" 2>&1; then
    echo "error: go install $package@$version failed: $(grep -v '^go: downloading' "$log" | grep -m1 . || tail -n1 "$log") (full log: $log)" >&2
    exit 1
  fi
  echo "installed $name $version in $(( $(date +%s) - start ))s" >&2
  rm -rf "$dir" && mv "$dir.partial" "$dir"
}

# Stamp what Helm's release Makefile stamps: its version, and the Kubernetes version it assumes without a
# cluster (`helm template`, `helm lint`), taken from its client-go like the Makefile does. Unstamped, Helm
# says "v3.22" and assumes Kubernetes 1.20, and refuses charts that need a newer one.
helm_ldflags() {
  local gomod client_go minor
  gomod=$(GOWORK=off go mod download -json "helm.sh/helm/v3@$HELM_VERSION" 2>/dev/null \
    | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p') || return 1
  [[ -f "$gomod" ]] || return 1
  client_go=$(awk '$1 == "k8s.io/client-go" {print $2}' "$gomod")  # v0.N.x goes with Kubernetes 1.N
  minor=${client_go#v0.}; minor=${minor%%.*}
  [[ "$minor" =~ ^[0-9]+$ ]] || return 1
  local flags="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    flags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  echo "$flags"
}
if [[ ! -x "$tools/helm-$HELM_VERSION/helm" ]] && command -v go >/dev/null 2>&1; then
  helm_flags=$(helm_ldflags) || { echo "error: could not read helm.sh/helm/v3@$HELM_VERSION's go.mod from the module proxy" >&2; exit 1; }
fi
install_tool helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "${helm_flags:-}"
install_tool kustomize "$KUSTOMIZE_VERSION" sigs.k8s.io/kustomize/kustomize/v5

# One directory with both, so callers add a single entry to PATH.
mkdir -p "$bin"
ln -sfn "$tools/helm-$HELM_VERSION/helm" "$bin/helm"
ln -sfn "$tools/kustomize-$KUSTOMIZE_VERSION/kustomize" "$bin/kustomize"
echo "$bin"
