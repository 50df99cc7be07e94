#!/bin/busybox sh
# katats guest init: PID 1 from the initrd. Mounts the basics, loads the modules listed in
# /etc/katats/modules (dependency order, computed at build time), reads the launch data and the
# kernel command line, mounts the read-only rootfs disk, and switches to it executing the agent.
B=/bin/busybox
PROC=/proc
up() { read -r u _ <$PROC/uptime; echo "$u"; }
say() { echo "katats-init: $*"; }
fail() {
  say "FATAL: $*"
  if [ "$DEBUG_CONSOLE" = 1 ]; then say "debug console: dropping to a shell"; exec $B sh </dev/console >/dev/console 2>&1; fi
  $B sleep 1; $B poweroff -f
}

# The V8-relevant CPU features, formatted like cpuSignature() in guest/node-snapshot.ts.
cpu_sig() {
  local flags out f vendor family model
  flags=" $($B sed -n 's/^flags[[:space:]]*: //p' $PROC/cpuinfo | $B head -n1) "
  out=
  for f in pni ssse3 sse4_1 sse4_2 popcnt avx avx2 fma bmi1 bmi2 abm lahf_lm; do
    case "$flags" in *" $f "*) out="$out $f" ;; esac
  done
  vendor=$($B sed -n 's/^vendor_id[[:space:]]*: //p' $PROC/cpuinfo | $B head -n1)
  family=$($B sed -n 's/^cpu family[[:space:]]*: //p' $PROC/cpuinfo | $B head -n1)
  model=$($B sed -n 's/^model[[:space:]]*: //p' $PROC/cpuinfo | $B head -n1)
  if [ "$vendor" = GenuineIntel ] && [ "$family" = 6 ]; then out="$out intel6-model=$model"; else out="$out other"; fi
  echo "${out# }"
}

$B mount -t proc -o nosuid,nodev,noexec proc /proc
say "start uptime=$(up)"
$B mount -t devtmpfs -o nosuid,mode=0755 dev /dev
$B mount -t sysfs -o nosuid,nodev,noexec sys /sys
$B mount -t tmpfs -o nosuid,nodev,mode=0755,size=64m run /run
$B mkdir -p /dev/pts /dev/shm
$B mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620 devpts /dev/pts
$B mount -t tmpfs -o nosuid,nodev,mode=1777 shm /dev/shm

# Kernel command line, Kata style: agent.log=LEVEL, agent.debug_console, plus katats.* keys.
LOG_LEVEL=info DEBUG_CONSOLE=0 ROOT_DEV=serial:katats-root ROOT_FS=@ROOTFS_TYPE@ AGENT=@AGENT_PATH@
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    agent.log=*) LOG_LEVEL=${arg#agent.log=} ;;
    agent.debug_console|agent.debug_console=1|agent.debug_console=true) DEBUG_CONSOLE=1 ;;
    katats.root=*) ROOT_DEV=${arg#katats.root=} ;;
    katats.rootflags=*) ROOT_FLAGS=,${arg#katats.rootflags=} ;;
    katats.agent=*) AGENT=${arg#katats.agent=} ;;
    katats.trace_init) TRACE=1 ;;
    katats.node_snapshot=0) NODE_SNAPSHOT=0 ;;
    katats.node_opts=*) NODE_OPTS=$(echo "${arg#katats.node_opts=}" | $B tr ',' ' ') ;;
  esac
done

KREL=$($B uname -r)
if [ -z "$TRACE" ]; then
  # One modprobe process loads the whole list in order (a fork+exec per module costs ~15 ms on TCG).
  $B modprobe -a $($B sed 's/\.ko$//' /etc/katats/modules) || fail "modprobe failed"
else
  while read -r m; do
    [ -n "$m" ] || continue
    $B insmod "/lib/modules/$KREL/$m" || fail "insmod $m"
    say "insmod $m uptime=$(up)"
  done </etc/katats/modules
fi
say "modules uptime=$(up)"

# Launch data (simulated SEV-SNP HOST_DATA) from fw_cfg: copied once, read-only from then on.
$B mkdir -p /run/katats
HD=/sys/firmware/qemu_fw_cfg/by_name/opt/katats/host_data/raw
if [ -r "$HD" ]; then
  $B cat "$HD" >/run/katats/host_data && $B chmod 0444 /run/katats/host_data
fi

# An image variant: a cpio member appended to the initrd (guest/variant.ts) carries a label, said on
# the console, so that a host can see which variant really booted (the initramfs is gone after
# switch_root).
if [ -f /etc/katats-variant ]; then
  say "image variant $($B head -c 64 /etc/katats-variant | $B tr -cd 'A-Za-z0-9._-')"
fi

# The rootfs disk: a read-only virtio-blk device, found by its serial (katats.root=serial:NAME,
# the default) or named (katats.root=/dev/vdX).
$B mkdir -p /newroot
i=0
while [ $i -lt 200 ]; do
  case "$ROOT_DEV" in
    serial:*)
      for b in /sys/block/*; do
        [ "$(cat "$b/serial" 2>/dev/null)" = "${ROOT_DEV#serial:}" ] && ROOT_DEV=/dev/${b##*/} && break
      done ;;
  esac
  [ -b "$ROOT_DEV" ] && break
  $B usleep 10000; i=$((i+1))
done
$B mount -t "$ROOT_FS" -o "ro$ROOT_FLAGS" "$ROOT_DEV" /newroot || fail "mount $ROOT_DEV"

# The agent channel and the agent log port, found by name.
CHANNEL= LOGPORT=
for d in /sys/class/virtio-ports/*; do
  [ -r "$d/name" ] || continue
  case "$(cat "$d/name")" in
    agent.channel.0) CHANNEL=/dev/${d##*/} ;;
    agent.log.0) LOGPORT=/dev/${d##*/} ;;
  esac
done
[ -n "$CHANNEL" ] || fail "no virtio port named agent.channel.0"

$B mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup 2>/dev/null
for m in dev proc sys run; do $B mount --move /$m /newroot/$m || fail "move /$m"; done
$B mount -t tmpfs -o nosuid,nodev,mode=1777 tmp /newroot/tmp

[ -f "/newroot$AGENT" ] || fail "agent $AGENT not found in the rootfs"
PROC=/newroot/proc
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=linux
export KATATS_AGENT_CHANNEL=$CHANNEL KATATS_LOG_LEVEL=$LOG_LEVEL KATATS_DEBUG_CONSOLE=$DEBUG_CONSOLE
export KATATS_HOST_DATA=/run/katats/host_data
say "exec agent $AGENT channel=$CHANNEL log=${LOGPORT:-console} uptime=$(up)"
if [ -n "$LOGPORT" ]; then exec >"/newroot$LOGPORT" 2>&1; fi
# The node startup snapshot made at build time (skips node's bootstrap: seconds under TCG). V8
# takes it only on a CPU with the build machine's features (see guest/node-snapshot.ts).
SNAP=/usr/lib/katats/node-snapshot.blob
# Node refuses a snapshot made under other V8 flags (and exits): katats.node_opts (e.g. the
# --jitless the host asks for under TCG) rules it out.
if [ "$NODE_SNAPSHOT" != 0 ] && [ -n "$NODE_OPTS" ]; then
  NODE_SNAPSHOT=0
  echo "katats-init: node snapshot not used: node options '$NODE_OPTS' differ from the snapshot's" >&2
fi
if [ "$NODE_SNAPSHOT" != 0 ] && [ -f "/newroot$SNAP" ] && [ "$(cpu_sig)" != "$($B cat /newroot/usr/lib/katats/node-snapshot.cpu 2>/dev/null)" ]; then
  NODE_SNAPSHOT=0
  echo "katats-init: node snapshot not used: guest CPU features '$(cpu_sig)' differ from the build machine's" >&2
fi
# PID 1 must reap orphans, which node cannot: the agent's native helper, when it sits next to the
# agent, becomes PID 1 and runs node as its child (and powers off when node ends).
INIT=
RUNNER=${AGENT%/*}/katats-runner
[ -x "/newroot$RUNNER" ] && INIT="$RUNNER init --"
if [ "$NODE_SNAPSHOT" != 0 ] && [ -f "/newroot$SNAP" ]; then
  exec $B switch_root /newroot $INIT /usr/bin/node $NODE_OPTS --snapshot-blob "$SNAP" "$AGENT"
fi
exec $B switch_root /newroot $INIT /usr/bin/node $NODE_OPTS "$AGENT"
