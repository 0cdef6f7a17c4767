#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the Go module proxy (no binary downloads)
# and caches them outside the clone. Prints the directory that holds them,
# suitable for KUBEBUILDER_ASSETS.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.5}"
CACHE_ROOT="${CB_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/circuit-breaker-operator}"
ASSETS="$CACHE_ROOT/k8s-$K8S_VERSION"

log() { echo "control-plane: $*" >&2; }

build_etcd() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  log "building etcd $ETCD_VERSION (about a minute)"
  cat >"$work/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (
    cd "$work"
    go mod init etcd-build >/dev/null 2>&1
    go mod edit -require="go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1
    CGO_ENABLED=0 go build -trimpath -o "$ASSETS/etcd.tmp" .
  )
  mv "$ASSETS/etcd.tmp" "$ASSETS/etcd"
}

build_kube_apiserver() {
  local work src minor
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  log "building kube-apiserver $K8S_VERSION (about five minutes on 2 cores, once)"
  src=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  cp "$src/cmd/kube-apiserver/apiserver.go" "$work/main.go"
  chmod u+w "$work/main.go"
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  (
    cd "$work"
    go mod init kube-apiserver-build >/dev/null 2>&1
    go mod edit -require="k8s.io/kubernetes@$K8S_VERSION"
    # k8s.io/kubernetes points its staging modules at ./staging; use the published ones.
    for mod in $(sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$src/go.mod"); do
      go mod edit -replace="$mod=$mod@v0.$minor.${K8S_VERSION##*.}"
    done
    GOFLAGS=-mod=mod go mod tidy >/dev/null
    CGO_ENABLED=0 go build -trimpath -o "$ASSETS/kube-apiserver.tmp" \
      -ldflags "-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor" .
  )
  mv "$ASSETS/kube-apiserver.tmp" "$ASSETS/kube-apiserver"
}

mkdir -p "$ASSETS"
[ -x "$ASSETS/etcd" ] || build_etcd
[ -x "$ASSETS/kube-apiserver" ] || build_kube_apiserver
echo "$ASSETS"
