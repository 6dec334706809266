# Shared by hack/up and hack/test: installs what is missing and builds berth.
# Sourced, not run. Every step is idempotent and cheap when there is nothing to do.

BERTH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BERTH_CACHE=${BERTH_CACHE:-/var/cache/berth}
# One target dir outside the clone, reused by every clone and CI run on this machine: RocksDB
# alone takes about 15 minutes to compile.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$BERTH_CACHE/target}
BERTH_BIN_DIR=$CARGO_TARGET_DIR/debug

# Debian packages berth builds with (protoc, libclang for bindgen) and runs against in tests
# (apparmor: its parser loads berth's default profile on AppArmor hosts and checks it in tests;
# containerd 1.6: berth-bridge runs under it in the network interop tests, and the benchmarks'
# peer).
BERTH_APT_PACKAGES=(
  protobuf-compiler libclang-dev clang gcc libc6-dev pkg-config
  runc crun apparmor
  busybox-static nginx-light apache2-utils docker-registry procps util-linux
  iptables nftables iproute2 containernetworking-plugins
  python3-grpcio
  containerd
)

# Toolchains installed the usual ways, in case the caller's PATH lacks them (sudo, CI).
for d in "$HOME/.cargo/bin" /usr/local/go/bin; do
  case ":$PATH:" in *":$d:"*) ;; *) [ -d "$d" ] && PATH=$PATH:$d ;; esac
done
export PATH

log() { printf '==> %s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "$0: must run as root (berth manages mounts, namespaces and cgroups)" >&2
    exit 1
  fi
}

install_packages() {
  local missing=()
  for p in "${BERTH_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
  unpack_busybox
  # Debian enables these services on install; berth's tests start their own instances.
  for svc in docker-registry nginx containerd; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
  done
  for tool in cargo go; do
    command -v "$tool" >/dev/null || { echo "$0: $tool is required (Rust via rustup, Go 1.24+)" >&2; exit 1; }
  done
}

# The test images' busybox. Debian's busybox-static runs applets such as `ls` inside its shell,
# so masking /bin/ls in a container would not hide it (critest's MaskedPaths spec); the dynamic
# build execs them. The two packages conflict, so the dynamic one is unpacked, not installed.
unpack_busybox() {
  local dest=$BERTH_CACHE/busybox-deb tmp
  [ -x "$dest/bin/busybox" ] && return 0
  log "unpacking Debian's dynamic busybox into $dest"
  tmp=$(mktemp -d)
  if ! (cd "$tmp" && apt-get download busybox >/dev/null 2>&1); then
    apt-get update -q
    (cd "$tmp" && apt-get download busybox)
  fi
  mkdir -p "$dest"
  dpkg-deb -x "$tmp"/busybox_*.deb "$dest"
  rm -rf "$tmp"
}

install_cri_tools() {
  BERTH_GO_BIN=$("$BERTH_REPO/hack/install-cri-tools.sh" | tail -n 1)
  export BERTH_GO_BIN
}

# The newest cri-tools' critest, which the e2e suite runs beside the pinned one.
install_newest_critest() {
  # shellcheck source=versions.env
  source "$BERTH_REPO/hack/versions.env"
  "$BERTH_REPO/hack/install-cri-tools.sh" "$CRI_TOOLS_NEWEST_VERSION" >/dev/null
}

# RocksDB is compiled once per librocksdb-sys version and kept as a static library, so that a
# change in the dependency graph never recompiles it (ROCKSDB_LIB_DIR makes the -sys crate link
# the cached library instead of compiling).
rocksdb_cache_dir() {
  local v
  v=$(awk '/^name = "librocksdb-sys"$/ { getline; gsub(/"/, "", $3); print $3 }' "$BERTH_REPO/Cargo.lock")
  echo "$BERTH_CACHE/rocksdb/${v:-unknown}-debug"
}

use_cached_rocksdb() {
  local dir
  dir=$(rocksdb_cache_dir)
  if [ -f "$dir/librocksdb.a" ]; then
    export ROCKSDB_LIB_DIR=$dir ROCKSDB_STATIC=1
  fi
}

save_rocksdb() {
  local dir lib
  dir=$(rocksdb_cache_dir)
  [ -f "$dir/librocksdb.a" ] && return 0
  lib=$(ls -t "$CARGO_TARGET_DIR"/debug/build/librocksdb-sys-*/out/librocksdb.a 2>/dev/null | head -n 1)
  [ -n "$lib" ] || return 0
  mkdir -p "$dir"
  cp "$lib" "$dir/librocksdb.a.tmp" && mv "$dir/librocksdb.a.tmp" "$dir/librocksdb.a"
  log "cached $lib in $dir"
}

# The shared target dir keeps every build's artifacts and grows by a few GiB a week of commits;
# past this size it is emptied. With RocksDB cached (above) a rebuild from empty takes minutes.
BERTH_TARGET_MAX_GIB=${BERTH_TARGET_MAX_GIB:-40}

trim_target_dir() {
  local gib
  [ -d "$CARGO_TARGET_DIR" ] || return 0
  gib=$(du -s --block-size=1G "$CARGO_TARGET_DIR" 2>/dev/null | cut -f1)
  if [ "${gib:-0}" -gt "$BERTH_TARGET_MAX_GIB" ] && [ -f "$(rocksdb_cache_dir)/librocksdb.a" ]; then
    log "target dir $CARGO_TARGET_DIR holds ${gib} GiB (limit $BERTH_TARGET_MAX_GIB): emptying it"
    rm -rf "$CARGO_TARGET_DIR"
  fi
}

build_berth() {
  cd "$BERTH_REPO"
  trim_target_dir
  use_cached_rocksdb
  log "building berth (target dir $CARGO_TARGET_DIR)"
  cargo build --workspace --bins --locked
  save_rocksdb
}
