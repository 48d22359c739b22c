#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the pinned module, cached outside the repo by version.
# Prints the directory that holds the binaries. Honours KUBEBUILDER_ASSETS (envtest convention).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
k8s_version="$(cat "$here/KUBERNETES_VERSION")"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2}' "$here/go.mod")"

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
  echo "$KUBEBUILDER_ASSETS"; exit 0
fi
cache_root="${MODELROLLOUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelrollout}"
out="$cache_root/bin/kube-${k8s_version}-etcd-${etcd_version}"
if [[ -x "$out/kube-apiserver" && -x "$out/etcd" ]]; then
  echo "$out"; exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "error: the Go toolchain is needed to build kube-apiserver ${k8s_version} and etcd ${etcd_version}; install Go or set KUBEBUILDER_ASSETS" >&2
  exit 1
fi
mkdir -p "$out.partial"
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
pkg=k8s.io/component-base/version
ldflags="-s -w -X $pkg.gitVersion=${k8s_version} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor} -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
start=$(date +%s)
log="$out.partial/build.log"
if ! (cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$out.partial/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
      && go build -trimpath -ldflags "-s -w" -o "$out.partial/etcd" go.etcd.io/etcd/server/v3) >"$log" 2>&1; then
  echo "error: building kube-apiserver ${k8s_version} / etcd ${etcd_version} failed: $(grep -m1 -E 'error|cannot|undefined' "$log" || tail -n1 "$log") (full log: $log)" >&2
  exit 1
fi
echo "built kube-apiserver ${k8s_version} and etcd ${etcd_version} in $(( $(date +%s) - start ))s" >&2
rm -rf "$out" && mv "$out.partial" "$out"
echo "$out"
