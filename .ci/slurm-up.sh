#!/usr/bin/env bash
# A real single-node SLURM (Debian's slurm-wlm) on 127.0.0.1 for tests/test_slurm.py, with
# Debian's slurm-wlm-torque (Torque-style qsub/qstat/qdel over SLURM) for the PBS
# profile's torque dialect in tests/test_pbs_torque.py.
# Needs root and Debian's package registry; started without systemd. One node named
# after `hostname -s` with one count-only GPU (a gres backed by an empty file, no real
# device) per CPU so that `sbatch --gpus=1` jobs schedule and still run side by side. No accounting daemon: the tests ask the
# executor plugin to check job states with squeue (MinJobAge keeps finished jobs visible).
# Usage: SLURM_TEST_DIR=/tmp/slurm .ci/slurm-up.sh      (prints sinfo when ready)
set -euo pipefail
D=${SLURM_TEST_DIR:?set SLURM_TEST_DIR to a scratch folder}
if ! command -v slurmctld >/dev/null || ! dpkg -s slurm-wlm-torque >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge slurm-wlm-torque >/dev/null
fi
mkdir -p "$D"/{state,spool,log}
[ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
mkdir -p /run/munge && chown munge:munge /run/munge
pgrep -x munged >/dev/null || su -s /bin/sh munge -c /usr/sbin/munged
HN=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(free -m | awk '/^Mem:/{print $2}') - 1024 ))
for i in $(seq 0 $((CPUS - 1))); do touch "$D/fakegpu$i"; done
echo "NodeName=$HN Name=gpu File=$D/fakegpu[0-$((CPUS - 1))]" > /etc/slurm/gres.conf
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=otamerge-ci
SlurmctldHost=${HN}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$D/state/slurmctld.pid
SlurmdPidFile=$D/state/slurmd.pid
SlurmdSpoolDir=$D/spool
StateSaveLocation=$D/state
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
SlurmdTimeout=30
GresTypes=gpu
NodeName=$HN NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:$CPUS State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# (re)start with this configuration
pkill -x slurmd || true; pkill -x slurmctld || true
for _ in $(seq 20); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || break; sleep 0.5; done
slurmctld
slurmd
for _ in $(seq 60); do sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed" && break; sleep 0.5; done
sinfo
