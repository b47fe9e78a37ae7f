#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, as root: munged, slurmctld and slurmd, configured by a
# small slurm.conf in $EFFILAB_SLURM_DIR (default /tmp/effilab-slurm). CI starts it for
# tests/test_grader_slurm.py; it is also a local try of `python -m grader slurm` (README, "Grading on a
# cluster"):
#
#     sudo apt-get install -y slurm-wlm munge     # Debian / Ubuntu
#     sudo .ci/slurm.sh
#     export SLURM_CONF=/tmp/effilab-slurm/slurm.conf
#
# Idempotent: a daemon already running is left alone, so running it twice is harmless. Prints the time
# it took. Stop the cluster with: .ci/slurm.sh stop
set -euo pipefail
dir=${EFFILAB_SLURM_DIR:-/tmp/effilab-slurm}
export SLURM_CONF=$dir/slurm.conf
start=$(date +%s)
say() { echo "== slurm: $*"; }
die() { echo "slurm.sh: $*" >&2; exit 1; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
  for d in slurmd slurmctld; do
    if alive "$dir/$d.pid"; then
      kill "$(cat "$dir/$d.pid")"
      for _ in $(seq 30); do alive "$dir/$d.pid" || break; sleep 1; done
      say "stopped $d"
    fi
  done
}

need_tools() {
  [ "$(id -u)" = 0 ] || die "run as root (slurmd starts each job as the user who submitted it)"
  local t
  for t in munged mungekey slurmctld slurmd sbatch scontrol sinfo; do
    command -v "$t" >/dev/null || die "$t not found: install Debian's packages: apt-get install -y slurm-wlm munge"
  done
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  if [ ! -s /etc/munge/munge.key ]; then
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
  chmod 0400 /etc/munge/munge.key
  chmod 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  munge -n </dev/null | unmunge >/dev/null || die "munged started but a credential does not round-trip"
  say "munged up"
}

write_conf() {
  local host node
  host=$(hostname -s)
  # the node line as slurmd measures it (CPUs, sockets, RealMemory): a node that claims more than it
  # has would be drained
  # (at 127.0.0.1: a container's host name need not resolve)
  node="$(slurmd -C | head -1) NodeAddr=127.0.0.1"
  mkdir -p "$dir/state" "$dir/spool" "$dir/log"
  cat >"$SLURM_CONF.tmp" <<EOF
# effilab's single-node test cluster (written by .ci/slurm.sh)
ClusterName=effilab
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
SchedulerParameters=sched_interval=2
$node
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$SLURM_CONF.tmp" "$SLURM_CONF"
}

start_slurm() {
  alive "$dir/slurmctld.pid" || { slurmctld -f "$SLURM_CONF"; say "slurmctld started"; }
  alive "$dir/slurmd.pid" || { slurmd -f "$SLURM_CONF"; say "slurmd started"; }
  local host state i
  host=$(hostname -s)
  for i in $(seq 120); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in
      idle*|mix*|alloc*) say "node $host $state, SLURM_CONF=$SLURM_CONF ($(( $(date +%s) - start )) s)"; return ;;
      down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
    esac
    sleep 1
  done
  tail -5 "$dir/log/slurmctld.log" "$dir/log/slurmd.log" >&2 || true
  die "the node did not come up in 120 s (state: ${state:-none}); see the logs in $dir/log"
}

case "${1:-start}" in
  stop) stop ;;
  start)
    need_tools
    start_munge
    [ -s "$SLURM_CONF" ] && alive "$dir/slurmctld.pid" || write_conf
    start_slurm
    ;;
  *) die "usage: $0 [start|stop]" ;;
esac
