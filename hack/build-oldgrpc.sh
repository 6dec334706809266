#!/usr/bin/env bash
# Builds e2e/oldgrpc (a CRI client on the grpc-go of kubelet 1.27, which sends the socket path as
# the HTTP/2 :authority) into a cache dir keyed by its go.sum, and prints the binary's path.
# Modules come through the Go module proxy configured on the machine.
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../e2e/oldgrpc" && pwd)"
for d in "$HOME/.cargo/bin" /usr/local/go/bin; do
    case ":$PATH:" in *":$d:"*) ;; *) [ -d "$d" ] && PATH=$PATH:$d ;; esac
done
command -v go >/dev/null || { echo "build-oldgrpc: go is not on PATH" >&2; exit 1; }

key="$(cat "${src}/go.mod" "${src}/go.sum" "${src}/main.go" | sha256sum | cut -c1-16)"
bin="/var/cache/berth/go-bin/oldgrpc-${key}/oldgrpc"
if [[ ! -x "${bin}" ]]; then
    echo "build-oldgrpc: building ${bin}" >&2
    mkdir -p "$(dirname "${bin}")"
    (cd "${src}" && CGO_ENABLED=0 go build -mod=readonly -o "${bin}.tmp" . && mv "${bin}.tmp" "${bin}")
fi
echo "${bin}"
