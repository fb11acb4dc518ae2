#!/usr/bin/env bash
# slurm-local-stop.sh - stop the cluster that slurm-local-start.sh started.
#
#   slurm-local-stop.sh [--purge]
#     --purge   also delete $SLURM_LOCAL_DIR (job state, accounting DB, logs); the next start is fresh
#
# Only processes recorded in our PID files are signalled, and only when /proc/PID/comm names the
# expected daemon, so a stale PID file never hits an unrelated process. A munged that was already
# running before slurm-local-start.sh is left alone (the start script only records munged it started).
set -euo pipefail

DIR=$(realpath -m "${SLURM_LOCAL_DIR:-/var/tmp/slurm-local}")
RUN=$DIR/run
PURGE=0
T0=$(date +%s.%N)

log() { echo "slurm-local-stop: $*" >&2; }
die() { echo "slurm-local-stop: ERROR: $*" >&2; exit 1; }

for arg in "$@"; do
  case $arg in
    --purge) PURGE=1 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) die "unknown option '$arg' (only --purge is supported)" ;;
  esac
done

# pid_if_ours PIDFILE COMM: print the PID when it is alive and really is COMM.
pid_if_ours() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

# stop_all SECONDS PIDFILE:COMM...: TERM all listed daemons together, wait for them, KILL stragglers.
stop_all() {
  local wait_s=$1 spec pidfile comm pid i alive pids=()
  shift
  for spec in "$@"; do
    pidfile=${spec%:*} comm=${spec##*:}
    if pid=$(pid_if_ours "$pidfile" "$comm"); then
      log "stopping $comm (pid $pid)"
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    elif [ -s "$pidfile" ]; then
      log "ignoring stale $pidfile (pid $(cat "$pidfile") is not a running $comm)"
    fi
    rm -f "$pidfile"
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  for ((i = 0; i < wait_s * 10; i++)); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null && { log "pid $pid ignored SIGTERM for ${wait_s}s, sending SIGKILL"; kill -KILL "$pid" 2>/dev/null; }
  done
  return 0
}

# Running jobs would outlive slurmd (their slurmstepd keeps going), so cancel everything while the
# controller can still deliver the signals.
cancel_jobs() {
  local jobs i
  pid_if_ours "$RUN/slurmctld.pid" slurmctld >/dev/null || return 0
  jobs=$(timeout 5 squeue -h -o %A 2>/dev/null | tr '\n' ' ') || return 0
  [ -n "${jobs// /}" ] || return 0
  log "cancelling jobs: $jobs"
  # shellcheck disable=SC2086  # one argument per job ID
  timeout 10 scancel $jobs 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    [ -z "$(timeout 5 squeue -h -o %A 2>/dev/null)" ] && return 0
    sleep 0.2
  done
  log "some jobs were still listed after 20s; stopping anyway"
}

purge() {
  # Refuse anything that looks like a system directory rather than our own state tree.
  case ${DIR%/} in
    "" | / | /var | /tmp | /var/tmp | /root | /home | /etc | /usr | /opt | /srv) die "refusing to purge '$DIR'" ;;
  esac
  [ -d "$DIR" ] || return 0
  log "purging $DIR"
  rm -rf "$DIR"
}

[ "$(id -u)" = 0 ] || die "must run as root"
cancel_jobs
stop_all 30 "$RUN/slurmd.pid:slurmd" "$RUN/slurmctld.pid:slurmctld"
# slurmctld hands its last accounting records to slurmdbd while shutting down, so slurmdbd goes after it.
stop_all 30 "$RUN/slurmdbd.pid:slurmdbd"
stop_all 60 "$DIR/mysqlrun/mysqld.pid:mariadbd" "$RUN/munged.pid:munged"
[ "$PURGE" = 0 ] || purge
log "$(awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN {printf "stopped in %.1fs", t1 - t0}')"
