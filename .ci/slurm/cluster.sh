#!/usr/bin/env bash
# A real Slurm cluster of NODES virtual nodes (n1..nNODES) on this one machine, for the tests of
# graceful under srun and sbatch: slurmctld and one slurmd per node, started directly (no systemd),
# everything (configuration, state, pid files, logs) in DIR.
#
#   cluster.sh up DIR [NODES]   start it (NODES: 3), wait until every node is idle, print
#                               `export SLURM_CONF=DIR/slurm.conf`; a cluster already up in DIR
#                               with NODES nodes is kept as it is
#   cluster.sh down DIR         stop every daemon of DIR, and the job steps and srun's still
#                               running there, and wait until they are gone
#   cluster.sh install          only install Slurm where it is missing (CI, before the tests)
#
# `up` installs Debian's slurmctld, slurmd and slurm-client when they are missing (root and apt-get
# needed). When the cluster cannot be had here (not root, no apt-get, no network), it prints one line
# and exits 3: callers report their tests as skipped with that line.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

script=cluster.sh
unavailable() {
    echo "$script: $*" >&2
    exit 3
}

usage() {
    echo "usage: $script up DIR [NODES] | $script down DIR | $script install" >&2
    exit 2
}

install_slurm() {
    local command missing=0
    for command in slurmctld slurmd srun sbatch scancel squeue sinfo scontrol; do
        command -v "$command" >/dev/null || missing=1
    done
    [ "$missing" -eq 0 ] && return 0
    command -v apt-get >/dev/null || unavailable "Slurm is not installed, and there is no apt-get to install it"
    local log=/tmp/graceful-slurm.install.log
    echo "$script: installing slurmctld, slurmd and slurm-client with apt-get (log: $log)" >&2
    # One install at a time: test processes may bring clusters up together.
    if ! (
        flock 9
        # The packages must not start their services (no systemd here, and no system-wide Slurm is
        # wanted): a policy-rc.d that says no (101) while apt runs; the machine's own, if it has
        # one that says otherwise, is put back after.
        policy=/usr/sbin/policy-rc.d
        answer=0
        [ -e "$policy" ] && { "$policy" slurmd start >/dev/null 2>&1 || answer=$?; }
        if [ "$answer" -ne 101 ]; then
            [ -e "$policy" ] && mv "$policy" "$policy.graceful-saved"
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 755 "$policy"
            trap 'rm -f "$policy"; [ ! -e "$policy.graceful-saved" ] || mv "$policy.graceful-saved" "$policy"' EXIT
        fi
        command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v srun >/dev/null && exit 0
        options=(-q -o Acquire::Retries=0 -o Acquire::http::Timeout=20)
        DEBIAN_FRONTEND=noninteractive timeout 300 apt-get "${options[@]}" update &&
            DEBIAN_FRONTEND=noninteractive timeout 600 apt-get "${options[@]}" install -y --no-install-recommends \
                slurmctld slurmd slurm-client
    ) 9>/var/lock/graceful-slurm-install.lock >"$log" 2>&1; then
        unavailable "could not install Slurm with apt-get (no network?): $(tail -n 1 "$log")"
    fi
}

# The fields of /proc/PID/stat after the command name: state, ppid, pgrp, ...; empty once gone.
proc_stat() {
    local stat
    { read -r stat <"/proc/$1/stat"; } 2>/dev/null || return 0
    echo "${stat##*) }"
}

# Whether PID's command name is NAME (read without a fork: down scans every process).
command_name() {
    local comm
    { read -r comm <"/proc/$1/comm"; } 2>/dev/null && [ "$comm" = "$2" ]
}

# Whether PID is alive (a zombie is not) and one of this cluster's processes named NAME: it has one
# of DIR's logs open, as every daemon and slurmstepd of the cluster has (slurmstepd overwrites its
# environment with its title, so only its descriptors say whose it is). `down` touches no other
# process: never a system Slurm nor another cluster's.
is_ours() {
    local pid=$1 name=$2 fd
    [[ "$pid" =~ ^[0-9]+$ ]] && command_name "$pid" "$name" && alive "$pid" || return 1
    for fd in "/proc/$pid/fd/"*; do
        case $(readlink "$fd" 2>/dev/null) in "$dir"/slurm*.log) return 0 ;; esac
    done
    return 1
}

alive() {
    local state
    state=$(proc_stat "$1")
    [ -n "$state" ] && [ "${state%% *}" != Z ]
}

# The pids in DIR's pid files whose daemon still runs: slurmctld's, or the slurmd's, or both.
daemon_pids() {
    local file name pid
    for file in "$dir"/slurmctld.pid "$dir"/slurmd-*.pid; do
        [ -f "$file" ] || continue
        name=slurmd
        [ "${file##*/}" = slurmctld.pid ] && name=slurmctld
        [ $# -eq 0 ] || [ "$1" = "$name" ] || continue
        pid=$(cat "$file" 2>/dev/null || true)
        if is_ours "$pid" "$name"; then echo "$pid"; fi
    done
}

# Waits until none of PIDS is alive, at most SECONDS (tenths of a second resolution).
wait_gone() {
    local seconds=$1 pid left
    shift
    for ((tick = 0; tick < seconds * 10; tick++)); do
        left=0
        for pid in "$@"; do
            if alive "$pid"; then left=1; fi
        done
        [ "$left" -eq 0 ] && return 0
        sleep 0.1
    done
    return 1
}

# Whether PID is an srun or salloc of this cluster (its SLURM_CONF): once the daemons are gone it
# would wait for its steps for ever.
is_client() {
    command_name "$1" srun || command_name "$1" salloc || return 1
    alive "$1" && tr '\0' '\n' 2>/dev/null <"/proc/$1/environ" | grep -qxF "SLURM_CONF=$conf"
}

# What still runs jobs: the tasks of each step, by process group (proctrack/pgid tracks them so, and
# killing slurmstepd alone would orphan them), the slurmstepd's, and the cluster's srun's and salloc's.
kill_jobs() {
    local path pid stepds=() clients=() child fields ppid pgrp own_pgrp
    own_pgrp=$(proc_stat $$ | cut -d' ' -f3)
    for path in /proc/[0-9]*; do
        pid=${path#/proc/}
        if is_ours "$pid" slurmstepd; then
            stepds+=("$pid")
        elif is_client "$pid"; then
            clients+=("$pid")
        fi
    done
    [ $((${#stepds[@]} + ${#clients[@]})) -gt 0 ] || return 0
    for path in /proc/[0-9]*; do
        child=${path#/proc/}
        fields=$(proc_stat "$child")
        [ -n "$fields" ] || continue
        read -r _ ppid pgrp _ <<<"$fields"
        for pid in "${stepds[@]}"; do
            if [ "$ppid" = "$pid" ] && [ "$pgrp" != "$own_pgrp" ] && [ "$pgrp" -gt 1 ]; then
                kill -KILL -- "-$pgrp" 2>/dev/null || true
            fi
        done
    done
    kill -KILL "${stepds[@]}" "${clients[@]}" 2>/dev/null || true
    wait_gone 5 "${stepds[@]}" "${clients[@]}" || true
}

# Sends SIGTERM to PIDS and waits until they are gone (SIGKILL after 15 s).
stop() {
    [ $# -gt 0 ] || return 0
    kill -TERM "$@" 2>/dev/null || true
    wait_gone 15 "$@" && return 0
    echo "$script: $* still running 15 s after SIGTERM; sending SIGKILL" >&2
    kill -KILL "$@" 2>/dev/null || true
    wait_gone 5 "$@" || { echo "$script: could not stop $*" >&2; return 1; }
}

# slurmctld first, so that no job starts meanwhile, then the jobs, then the slurmd's (and the jobs
# again, for a launch that was already under way).
down() {
    local ctld=() slurmds=() pid
    mapfile -t ctld < <(daemon_pids slurmctld)
    mapfile -t slurmds < <(daemon_pids slurmd)
    stop "${ctld[@]}"
    kill_jobs
    stop "${slurmds[@]}"
    kill_jobs
    rm -f "$dir"/slurmctld.pid "$dir"/slurmd-*.pid
}

# Whether TCP port PORT is used by any socket, in any state (/proc/net/tcp*: hex local port).
port_used() {
    local hex
    hex=$(printf ':%04X ' "$1")
    grep -qF "$hex" /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# NODES+1 free consecutive ports (slurmctld's, then one per slurmd) in one of the blocks of 100 from
# 17000 to 27000, starting from a block that depends on DIR so that clusters brought up together
# rarely probe the same ports.
choose_ports() {
    local count=$(($1 + 1)) start hash base port ok
    hash=$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
    start=$((hash % 100))
    for ((attempt = 0; attempt < 100; attempt++)); do
        base=$((17000 + ((start + attempt) % 100) * 100))
        ok=1
        for ((port = base; port < base + count; port++)); do
            if port_used "$port"; then ok=0; break; fi
        done
        if [ "$ok" -eq 1 ]; then echo "$base"; return 0; fi
    done
    echo "$script: no $count free consecutive ports between 17000 and 27000" >&2
    return 1
}

write_config() {
    local nodes=$1 base=$2 hash
    # Job ids from a start that depends on DIR: graceful's master port follows from the job id
    # (29500 + (id % 10000) * 2), and clusters brought up together on this machine would all number
    # their jobs from 1, so their concurrent jobs' leaders would want the same ports.
    hash=$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
    cat >"$conf" <<EOF
# Written by .ci/slurm/cluster.sh: $nodes virtual nodes on this machine, for tests.
ClusterName=graceful
SlurmctldHost=localhost
SlurmctldPort=$base
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd-%n.log
# pgid: linuxproc leaks the orphaned children of a killed batch shell.
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
# Else the nodes are drained: their declared hardware is not this machine's.
SlurmdParameters=config_overrides
ReturnToService=2
MailProg=/bin/true
MpiDefault=none
FirstJobId=$(((hash / 100) % 9000 + 1))
# Batch jobs start at once (by default their scheduling may wait up to 3 s).
SchedulerParameters=batch_sched_delay=0
# SIGKILL 5 s after SIGTERM (default 30): fast tests of the stop sequence.
KillWait=5
# 4 CPUs a node, whatever this machine has (config_overrides): the tests' jobs mostly sleep, and
# several of them (a batch job waiting for its signal beside steps of other tests) must fit at once.
NodeName=n[1-$nodes] NodeHostname=localhost NodeAddr=127.0.0.1 Port=$((base + 1))-$((base + nodes)) CPUs=4 RealMemory=4096
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# Waits (at most 30 s) until sinfo shows NODES idle nodes.
wait_idle() {
    local nodes=$1 states="" idle
    for ((tick = 0; tick < 300; tick++)); do
        states=$(SLURM_CONF=$conf timeout 3 sinfo -h -N -o '%N %t' 2>/dev/null || true)
        idle=$(grep -c ' idle$' <<<"$states" || true)
        [ "$idle" -eq "$nodes" ] && return 0
        if [ "$(daemon_pids | wc -l)" -ne $((nodes + 1)) ]; then
            tail -n 3 "$dir"/*.log >&2 || true
            echo "$script: a daemon exited while starting (its log's last lines above; logs in $dir)" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "$script: the nodes are not all idle after 30 s: $(tr '\n' ' ' <<<"$states")(logs in $dir)" >&2
    return 1
}

up() {
    local nodes=$1 running base node
    [ "$(id -u)" -eq 0 ] || unavailable "needs root (the slurmd's run as root)"
    mapfile -t running < <(daemon_pids)
    if [ ${#running[@]} -eq $((nodes + 1)) ] && grep -qx "NodeName=n\[1-$nodes\] .*" "$conf" 2>/dev/null; then
        wait_idle "$nodes"
        echo "export SLURM_CONF=$conf"
        return 0
    fi
    down
    install_slurm
    base=$(choose_ports "$nodes")
    mkdir -p "$dir/state"
    for ((node = 1; node <= nodes; node++)); do mkdir -p "$dir/spool/n$node"; done
    write_config "$nodes" "$base"
    # -c: a fresh start, no job of an earlier cluster in DIR. Nothing of the daemons' stays on the
    # caller's stdout or stderr: a caller reading them to their end would wait for ever.
    local started=1
    slurmctld -c -f "$conf" </dev/null >>"$dir/start.log" 2>&1 || started=0
    for ((node = 1; node <= nodes; node++)); do
        slurmd -f "$conf" -N "n$node" </dev/null >>"$dir/start.log" 2>&1 || started=0
    done
    if [ "$started" -eq 0 ]; then
        tail -n 3 "$dir"/*.log >&2 || true
        echo "$script: a daemon did not start (its log's last lines above; logs in $dir)" >&2
    fi
    if [ "$started" -eq 0 ] || ! wait_idle "$nodes"; then
        down || true
        exit 1
    fi
    echo "export SLURM_CONF=$conf"
}

if [ "${1:-}" = install ] && [ $# -eq 1 ]; then
    [ "$(id -u)" -eq 0 ] || unavailable "needs root (the slurmd's run as root)"
    install_slurm
    exit 0
fi
[ $# -ge 2 ] || usage
command=$1
case $command in
up)
    [ $# -le 3 ] || usage
    nodes=${3:-3}
    [[ "$nodes" =~ ^[1-9][0-9]?$ ]] || { echo "$script: NODES must be 1 to 99, not $nodes" >&2; exit 2; }
    mkdir -p "$2"
    dir=$(cd "$2" && pwd -P)
    conf=$dir/slurm.conf
    up "$nodes"
    ;;
down)
    [ $# -eq 2 ] || usage
    [ -d "$2" ] || exit 0
    dir=$(cd "$2" && pwd -P)
    conf=$dir/slurm.conf
    down
    ;;
*) usage ;;
esac
