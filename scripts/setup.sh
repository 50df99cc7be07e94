#!/usr/bin/env bash
# Installs what katats needs on a fresh Debian 12 machine: npm dependencies and Debian packages.
# Idempotent and quiet when everything is already present; safe to run before every test or demo.
set -euo pipefail
cd "$(dirname "$0")/.."
# apt's output stays with the checkout (ignored by git), not in /tmp.
mkdir -p .cache
apt_log=.cache/apt.log

# Debian packages by purpose. Each feature adds its own line; the union is installed once.
DEB_PACKAGES=(
  # guest image builder (guest/) and QEMU driver (vmm/): QEMU + firmware (qboot, pvh.bin from
  # qemu-system-data), erofs/ext4 image makers, depmod, xz for the PVH vmlinux
  qemu-system-x86 qemu-system-data erofs-utils e2fsprogs kmod xz-utils
  # agent (local mode and its tests): crun as the OCI runtime, gcc to build the katats-runner
  # helper statically, busybox for test rootfs, e2fsprogs for block storage tests, socat to stand
  # in for QEMU's virtio-serial chardev
  crun gcc libc6-dev busybox-static e2fsprogs socat
  # ttrpc interop: a Go peer built from Debian's own ttrpc sources
  golang-go golang-github-containerd-ttrpc-dev golang-github-gogo-protobuf-dev
  # integration harness and macro benchmark: a private containerd with runc; busybox for the test image
  containerd runc busybox-static
  # snapshotter (snapshotter/): veritysetup to check our verity trees against, fsck.erofs (erofs-utils
  # above) to check our EROFS images, zstd for zstd-compressed layers, getfattr/setfattr (attr) for the
  # layer tests
  cryptsetup-bin zstd attr
)

missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt_opts=(-o DPkg::Lock::Timeout=600 -qq)
  # A fresh machine has no package lists yet; refresh them once before the first install.
  if ! apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >"$apt_log" 2>&1; then
    apt-get "${apt_opts[@]}" update >>"$apt_log" 2>&1
    apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}" >>"$apt_log" 2>&1 \
      || { cat "$apt_log" >&2; exit 1; }
  fi
fi

# npm dependencies: install only when the lock file changed since the last install.
stamp=node_modules/.katats-lock-sha
want=$(sha256sum package-lock.json | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "setup: installing npm dependencies" >&2
  # Its log stays in the checkout's .cache (never a file left in /tmp).
  mkdir -p .cache
  npm ci --no-audit --no-fund --loglevel=error >.cache/npm-install.log 2>&1 || { cat .cache/npm-install.log >&2; exit 1; }
  echo "$want" >"$stamp"
fi
