#!/usr/bin/env bash
# A real two-node SLURM 22.05 cluster (node1, node2) on this one machine, for tests and for trying
# the launcher. Both nodes are slurmd daemons on this host; each claims all cores and two fake
# A100 GPUs, so GRES requests, multi-node jobs, requeue and signals behave as on a real site.
#
# Usage (as root): slurm/local_cluster.sh start|stop|status
set -euo pipefail

NODES=(node1 node2)
CTLD_PORT=6817
FIRST_SLURMD_PORT=6818           # node1 listens on 6818, node2 on 6819
GPU_TYPE=a100
GPUS_PER_NODE=2
REAL_MEMORY_MB=8000
START_TIMEOUT_S=60
CONF_DIR=/etc/slurm              # the Debian build of every SLURM command reads slurm.conf here
STATE_DIR=/var/lib/slurm-local
LOG_DIR=/var/log/slurm-local
RUN_DIR=/run/slurm-local
NODE_DISK=$STATE_DIR/disk       # each node's own folder here: see start_cluster
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PIDFILE=/run/munge/munged.pid
MUNGE_OURS=$STATE_DIR/munged-started-here   # stop only kills a munged that start launched
HOSTS_MARK="# slurm-local nodes"

die() { echo "local_cluster: $*" >&2; exit 1; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return
    echo "local_cluster: installing slurm-wlm and munge"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y slurm-wlm munge
}

munge_works() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    munge_works && return
    if [[ ! -s $MUNGE_KEY ]]; then
        mkdir -p "$(dirname "$MUNGE_KEY")"
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1024 count=1 status=none
    fi
    # munged refuses keys and directories that other users could read or write.
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge "$MUNGE_KEY" /run/munge /var/lib/munge /var/log/munge
    chmod 0400 "$MUNGE_KEY"
    rm -f /run/munge/munge.socket.2* "$MUNGE_PIDFILE"   # leftovers of a munged that died
    runuser -u munge -- munged
    mkdir -p "$STATE_DIR" && touch "$MUNGE_OURS"
    for _ in $(seq 20); do munge_works && return; sleep 0.5; done
    die "munged did not come up; see /var/log/munge/munged.log"
}

add_host_names() {
    # Multi-worker jobs build TF_CONFIG from `scontrol show hostnames` and connect to these names.
    # Append rather than rewrite: /etc/hosts is often a bind mount that cannot be replaced.
    grep -qF "$HOSTS_MARK" /etc/hosts || echo "127.0.0.1 ${NODES[*]} $HOSTS_MARK" >>/etc/hosts
}

# slurmd drops a GRES file that is not a device node, and then sets no CUDA_VISIBLE_DEVICES or
# SLURM_STEP_GPUS. A clone of /dev/null (char 1:3) is a harmless device; the index comes from the name.
make_fake_gpu() {
    [[ -c $1 ]] && return
    rm -f "$1"
    mknod -m 0666 "$1" c 1 3 2>/dev/null && return
    touch "$1"
    echo "local_cluster: cannot mknod $1; jobs will get GPUs but no CUDA_VISIBLE_DEVICES" >&2
}

write_config() {
    local cpus i node g
    cpus=$(nproc)
    mkdir -p "$CONF_DIR" "$STATE_DIR/ctld" "$LOG_DIR" "$RUN_DIR"
    # No cgroups here (containers, VMs without systemd): track processes by parent id and bind
    # nothing. Memory is not a consumable resource, so jobs without --mem can share a node.
    # config_overrides keeps a node up on a machine with less memory than RealMemory claims.
    # TmpFS per node: the two slurmstepds of one PMIx step would otherwise race for one /tmp dir.
    cat >"$CONF_DIR/slurm.conf" <<EOF
# Written by slurm/local_cluster.sh; rewritten on every start.
ClusterName=local
SlurmctldHost=localhost
SlurmctldPort=$CTLD_PORT
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool/%n
TmpFS=$STATE_DIR/tmp/%n
# No mail on this machine; the default MailProg is missing and slurmctld logs an error.
MailProg=/bin/true
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
GresTypes=gpu
MpiDefault=none
JobRequeue=1
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
InactiveLimit=0
# Accounting is off, so sacct has nothing: keep finished jobs in `scontrol show job` for 5 min.
MinJobAge=300
MaxJobCount=10000
# The GPUs below are placeholders: every task learns so (LAUNCH_ALLOW_CPU=1), so the trainer
# trains on the CPU instead of refusing a GPU allocation that TensorFlow cannot see.
TaskProlog=$CONF_DIR/task_prolog.sh
EOF
    printf '#!/bin/sh\necho export LAUNCH_ALLOW_CPU=1\n' >"$CONF_DIR/task_prolog.sh"
    chmod 755 "$CONF_DIR/task_prolog.sh"
    : >"$CONF_DIR/gres.conf"
    for i in "${!NODES[@]}"; do
        node=${NODES[$i]}
        echo "NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$node Port=$((FIRST_SLURMD_PORT + i))" \
            "CPUs=$cpus RealMemory=$REAL_MEMORY_MB Gres=gpu:$GPU_TYPE:$GPUS_PER_NODE" \
            "Features=$GPU_TYPE State=UNKNOWN" >>"$CONF_DIR/slurm.conf"
        mkdir -p "$STATE_DIR/gpu/$node" "$STATE_DIR/spool/$node" "$STATE_DIR/tmp/$node"
        chmod 1777 "$STATE_DIR/tmp/$node"
        for ((g = 0; g < GPUS_PER_NODE; g++)); do make_fake_gpu "$STATE_DIR/gpu/$node/nvidia$g"; done
        echo "NodeName=$node Name=gpu Type=$GPU_TYPE File=$STATE_DIR/gpu/$node/nvidia[0-$((GPUS_PER_NODE - 1))]" \
            >>"$CONF_DIR/gres.conf"
    done
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP" \
        >>"$CONF_DIR/slurm.conf"
    echo "AutoDetect=off" >>"$CONF_DIR/gres.conf"
}

# Prints the pid in $1 if that process is alive.
live_pid() { local pid; pid=$(cat "$1" 2>/dev/null) && kill -0 "$pid" 2>/dev/null && echo "$pid"; }

# True when every node's sinfo state matches the regex $1 (`idle*`, not responding, never does).
nodes_in_state() {
    local states node
    states=$(sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
    for node in "${NODES[@]}"; do grep -qE "^$node ($1)\$" <<<"$states" || return 1; done
}

daemons_alive() {
    local node
    live_pid "$RUN_DIR/slurmctld.pid" >/dev/null || return 1
    for node in "${NODES[@]}"; do live_pid "$RUN_DIR/slurmd-$node.pid" >/dev/null || return 1; done
}

# Each slurmd in a mount namespace of its own, where NODE_DISK is its own folder (start_cluster).
# A cluster started before that shares one folder between the nodes, and is restarted.
own_disks() {
    local node pid
    for node in "${NODES[@]}"; do
        pid=$(live_pid "$RUN_DIR/slurmd-$node.pid") || return 1
        [[ $(readlink "/proc/$pid/ns/mnt") != "$(readlink /proc/self/ns/mnt)" ]] || return 1
    done
}

stop_pidfile() {   # stop_pidfile PIDFILE NAME: SIGTERM, then SIGKILL after 10 s.
    local pid
    pid=$(live_pid "$1") || { rm -f "$1"; return 0; }
    kill "$pid"
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then echo "local_cluster: killing $2 ($pid)"; kill -9 "$pid"; fi
    rm -f "$1"
}

# Ids of the jobs in the controller's saved state (queued, running or finished in the last
# MinJobAge), one line; what `slurmctld -c` drops when the controller is not there to ask.
saved_job_ids() {
    local dir ids=()
    for dir in "$STATE_DIR"/ctld/hash.*/job.*; do [[ -d $dir ]] && ids+=("${dir##*/job.}"); done
    [[ ${#ids[@]} -gt 0 ]] && printf '%s\n' "${ids[@]}" | sort -n | paste -sd' '
    return 0
}

stop_cluster() {
    local node queued asked=""
    # Cancel jobs first so no slurmstepd or job process outlives its slurmd; name them, since
    # they are someone's runs and no restart brings them back.
    if scontrol ping >/dev/null 2>&1; then
        asked=1
        queued=$(squeue -h -o %i 2>/dev/null) || queued=""
        if [[ -n $queued ]]; then
            echo "local_cluster: cancelling $(wc -w <<<"$queued") queued or running job(s):" $queued >&2
            xargs -r scancel <<<"$queued"
            for _ in $(seq 30); do [[ -z $(squeue -h -o %i 2>/dev/null) ]] && break; sleep 0.5; done
        fi
    fi
    for node in "${NODES[@]}"; do stop_pidfile "$RUN_DIR/slurmd-$node.pid" "slurmd $node"; done
    stop_pidfile "$RUN_DIR/slurmctld.pid" slurmctld
    # Its jobs are finished or were named above: without their saved scripts the next start
    # does not name them again as dropped (saved_job_ids).
    [[ -z $asked ]] || rm -rf "$STATE_DIR"/ctld/hash.*
    if [[ -e $MUNGE_OURS ]]; then
        stop_pidfile "$MUNGE_PIDFILE" munged
        rm -f "$MUNGE_OURS"
    fi
}

start_cluster() {
    local node log dropped=""
    install_packages
    # Busy with other users' jobs still counts as up.
    if daemons_alive && own_disks && nodes_in_state 'idle|mixed|allocated|completing'; then
        echo "local_cluster: already running"; sinfo; return
    fi
    # A controller that answers has its jobs cancelled (and named) by stop_cluster; one that is
    # down cannot be asked, so name the jobs its saved state holds, which `slurmctld -c` drops.
    scontrol ping >/dev/null 2>&1 || dropped=$(saved_job_ids)
    stop_cluster   # clears a half-dead cluster; a no-op when nothing runs
    if [[ -n $dropped ]]; then
        echo "local_cluster: slurmctld was down; starting afresh drops the $(wc -w <<<"$dropped")" \
            "job(s) it had saved, queued, running or recently finished:" $dropped >&2
    fi
    start_munge
    add_host_names
    write_config
    # -c: start from empty job and node state, so a stale job or a drained node never blocks start.
    # A daemon that fails to start is reported with its log below rather than by set -e.
    slurmctld -c -f "$CONF_DIR/slurm.conf" || echo "local_cluster: slurmctld failed to start" >&2
    # Both nodes are this host. Each slurmd runs in a mount namespace of its own, where its own
    # folder (disks/NODE) is mounted at NODE_DISK, as each node of a real cluster has its own local
    # disk: what the node keeps there (enroot's containers, slurm/containers/build_pyxis.sh) is
    # that node's alone, so a two-node job's steps never unpack one container into the same folder.
    # Its slurmstepds, the enroot Pyxis runs and the job's tasks inherit the namespace.
    mkdir -p "$NODE_DISK"
    for node in "${NODES[@]}"; do
        mkdir -p "$STATE_DIR/disks/$node"
        chmod 1777 "$STATE_DIR/disks/$node"   # like /tmp: jobs run as their submitter
        unshare --mount --propagation slave -- sh -c 'mount --bind "$1" "$2" && exec slurmd -f "$3" -N "$4"' \
            sh "$STATE_DIR/disks/$node" "$NODE_DISK" "$CONF_DIR/slurm.conf" "$node" \
            || echo "local_cluster: slurmd $node failed" >&2
    done
    for _ in $(seq "$START_TIMEOUT_S"); do
        if nodes_in_state idle; then echo "local_cluster: up"; sinfo -N -o "%N %T %G %f"; return; fi
        sleep 1
    done
    sinfo -N -o "%N %T %E" >&2 || true
    for log in "$LOG_DIR"/*.log; do echo "==> $log <==" >&2; tail -n 15 "$log" >&2; done
    die "nodes not idle after $START_TIMEOUT_S s; logs above, all under $LOG_DIR"
}

[[ $EUID -eq 0 ]] || [[ ${1:-} == status || ${1:-} == node-disk ]] || die "run as root (it starts daemons and writes /etc)"
case ${1:-} in
    start) start_cluster ;;
    stop) stop_cluster; echo "local_cluster: stopped" ;;
    status)
        scontrol ping >/dev/null 2>&1 || die "not running; start it with slurm/local_cluster.sh start"
        sinfo -N -o "%N %T %G %f" ;;
    node-disk) echo "$NODE_DISK" ;;   # where a job's step finds its node's own folder
    *) die "usage: $0 start|stop|status|node-disk" ;;
esac
