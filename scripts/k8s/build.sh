#!/usr/bin/env bash
# Builds the local Kubernetes control plane that the `k8s` tests run against, once per machine.
#
# Debian's source package `kubernetes` (1.20.x, from bullseye) gives kube-apiserver,
# kube-controller-manager and kube-scheduler; they are built with Debian bullseye's golang-1.15
# (a newer Go builds an apiserver that crashes on custom resources). etcd comes from the
# `etcd-server` package and dnsmasq (for the DNS discovery tests) from `dnsmasq`.
# The binaries land in $LIGHTVLLM_K8S_DIR (default ~/.cache/lightvllm/k8s); a second run that finds
# them all there does nothing. Needs root and apt (as on CI); takes ~7 min on 2 cores.
set -euo pipefail

CACHE="${LIGHTVLLM_K8S_DIR:-$HOME/.cache/lightvllm/k8s}"
BIN="$CACHE/bin"
COMPONENTS=(kube-apiserver kube-controller-manager kube-scheduler)
SOURCES=/etc/apt/sources.list.d/lightvllm-bullseye.sources
PREFS=/etc/apt/preferences.d/lightvllm-bullseye
K8S_VERSION=1.20.2

log() { echo "[k8s-build $(date +%H:%M:%S)] $*"; }

all_built() {
    local c
    for c in "${COMPONENTS[@]}" etcd; do [ -x "$BIN/$c" ] || return 1; done
    command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ]
}

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# The Debian archive this machine's apt already uses (the one serving its own release).
debian_mirror() {
    local codename
    codename="$(. /etc/os-release && echo "$VERSION_CODENAME")"
    apt-get indextargets --format '$(REPO_URI) $(RELEASE)' \
        | awk -v r="$codename" '$2 == r {print $1; exit}'
}

# bullseye is added for golang-1.15 and the kubernetes source only, from the same archive,
# pinned below the system's release so that nothing installed from it is ever replaced.
add_bullseye() {
    if [ ! -f "$SOURCES" ]; then
        local mirror
        as_root apt-get update -q >/dev/null
        mirror="$(debian_mirror)"
        [ -n "$mirror" ] || { log "no Debian archive found in apt's sources"; exit 1; }
        log "adding Debian bullseye from $mirror (pinned low) for golang-1.15 and kubernetes"
        printf 'Types: deb deb-src\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: %s\n' \
            "$mirror" /usr/share/keyrings/debian-archive-keyring.gpg | as_root tee "$SOURCES" >/dev/null
        printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' | as_root tee "$PREFS" >/dev/null
    fi
    as_root apt-get update -q
}

install_packages() {
    log "installing golang-1.15 (bullseye), etcd-server, dnsmasq-base"
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends \
        -t bullseye golang-1.15-go
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends \
        etcd-server dnsmasq-base dpkg-dev rsync make
}

# The bullseye mirror still serves the upstream tarball (with vendor/) of the source package but
# no longer its .dsc, so take the tarball and check it against the sha256 in apt's Sources index.
fetch_source() {
    local work="$1" tarball sum
    log "fetching the kubernetes source package (bullseye)"
    (cd "$work" && apt-get source -q --download-only -t bullseye kubernetes >/dev/null 2>&1) || true
    tarball="$(ls "$work"/kubernetes_*.orig.tar.gz)"
    sum="$(apt-cache showsrc -t bullseye kubernetes \
        | awk -v f="$(basename "$tarball")" 'length($1) == 64 && $3 == f {print $1; exit}')"
    [ -n "$sum" ] || { log "no sha256 for $(basename "$tarball") in the Sources index"; exit 1; }
    echo "$sum  $tarball" | sha256sum -c --quiet
    log "verified $(basename "$tarball")"
    mkdir "$work/src"
    tar -xzf "$tarball" -C "$work/src" --strip-components=1
}

version_flags() {
    local pkg=k8s.io/component-base/version
    echo "-X $pkg.gitMajor=1 -X $pkg.gitMinor=20 -X $pkg.gitVersion=v$K8S_VERSION" \
         "-X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
}

build_components() {
    local src="$1" c
    export PATH="/usr/lib/go-1.15/bin:$PATH" GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache"
    export GOFLAGS=-mod=vendor GO111MODULE=on CGO_ENABLED=0 GOPROXY=off
    log "go: $(go version)"
    # The one generated file the source tarball lacks: the apiserver's OpenAPI definitions.
    log "generating pkg/generated/openapi (make gen_openapi)"
    (cd "$src" && GOFLAGS= make gen_openapi >/dev/null)
    for c in "${COMPONENTS[@]}"; do
        log "building $c"
        (cd "$src" && go build -o "$BIN/$c" -ldflags "-s -w $(version_flags)" "./cmd/$c")
    done
}

main() {
    if all_built; then
        log "control plane already built in $BIN"
        return 0
    fi
    mkdir -p "$BIN"
    # A fixed source path keeps the Go build cache valid when a failed build is run again.
    local work="$CACHE/build"
    rm -rf "$work" && mkdir -p "$work"
    add_bullseye
    install_packages
    ln -sf "$(command -v etcd || echo /usr/bin/etcd)" "$BIN/etcd"
    fetch_source "$work"
    build_components "$work/src"
    rm -rf "$work" "$CACHE/gocache" "$CACHE/gopath"
    log "done: $(ls "$BIN" | tr '\n' ' ')"
}

main "$@"
