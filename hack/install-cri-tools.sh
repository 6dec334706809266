#!/usr/bin/env bash
# Installs crictl and critest (the CRI clients the e2e tests drive) into a cached bin dir keyed by
# version, and prints that dir. Without an argument it installs the version pinned in
# hack/versions.env (CRI_TOOLS_VERSION); `install-cri-tools.sh VERSION` installs another one
# (CI runs critest at the pinned and at the newest version, CRI_TOOLS_NEWEST_VERSION).
#
# Everything is built from source through the Go module proxy: no prebuilt binary is downloaded.
# The bin dir is keyed by version, so bumping a version installs beside the old one and the e2e
# crate (which reads the same versions.env) finds the matching binaries.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"
version="${1:-${CRI_TOOLS_VERSION:?CRI_TOOLS_VERSION missing from hack/versions.env}}"
module="sigs.k8s.io/cri-tools"
if [[ $# -eq 0 && -n "${BERTH_GO_BIN:-}" ]]; then
    bin_dir="${BERTH_GO_BIN}"
else
    bin_dir="/var/cache/berth/go-bin/${version}"
fi

if [[ -x "${bin_dir}/crictl" && -x "${bin_dir}/critest" ]]; then
    echo "${bin_dir}"
    exit 0
fi

command -v go >/dev/null || { echo "install-cri-tools: go is not on PATH" >&2; exit 1; }
mkdir -p "${bin_dir}"

# Upstream's Makefile stamps the version this way; without it `crictl version` reports "unknown".
ldflags="-X ${module}/pkg/version.Version=${version#v}"

if [[ ! -x "${bin_dir}/crictl" ]]; then
    echo "install-cri-tools: building crictl ${version}" >&2
    GOBIN="${bin_dir}" CGO_ENABLED=0 go install -ldflags "${ldflags}" "${module}/cmd/crictl@${version}"
fi

if [[ ! -x "${bin_dir}/critest" ]]; then
    echo "install-cri-tools: building critest ${version}" >&2
    # critest is a ginkgo test binary (`go test -c`), which `go install pkg@version` cannot make.
    # A throwaway module that requires cri-tools resolves the same dependency versions as
    # cri-tools' own go.mod (it has no replace directives) and leaves the module cache read-only.
    work="$(mktemp -d)"
    trap 'rm -rf "${work}"' EXIT
    (
        cd "${work}"
        go mod init berth.local/critest-build >/dev/null
        go get "${module}@${version}" >/dev/null
        CGO_ENABLED=0 go test -c -mod=mod -ldflags "${ldflags}" \
            -o "${work}/critest" "${module}/cmd/critest"
    )
    # Move into place last, so an interrupted build never leaves a half-written binary behind.
    install -m 0755 "${work}/critest" "${bin_dir}/critest"
fi

echo "${bin_dir}"
