#!/usr/bin/env bash
# slurm-local-smoke.sh - quick end-to-end check of the local cluster (well under 30 s):
#   a batch job that succeeds, a batch job that exits 3, and a synchronous srun; then sacct must show
#   COMPLETED 0:0 and FAILED 3:0. Prints one OK line, or one FAIL line with the reason and exits 1.
set -euo pipefail

LIMIT=${SLURM_SMOKE_TIMEOUT:-25}   # seconds for the whole check
T0=$(date +%s.%N)
DEADLINE=$(( $(date +%s) + LIMIT ))

fail() { echo "slurm-local-smoke: FAIL: $*" >&2; exit 1; }
elapsed() { awk -v t0="$T0" -v t1="$(date +%s.%N)" 'BEGIN {printf "%.1f", t1 - t0}'; }

# submit NAME COMMAND: sbatch a one-liner and print its job ID. Output goes nowhere and the working
# directory is /tmp, so the check leaves no files behind whoever runs it.
submit() {
  local out
  out=$(timeout 10 sbatch --parsable -J "$1" -t 1 -D /tmp -o /dev/null --wrap "$2" 2>&1) ||
    fail "sbatch of $1 failed: $out"
  echo "${out%%;*}"
}

# acct_of JOBID: "STATE EXITCODE" of the job allocation as recorded by slurmdbd.
acct_of() {
  timeout 5 sacct -n -X -P -j "$1" -o state,exitcode 2>/dev/null | head -n1 | tr '|' ' '
}

timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP' || fail "slurmctld is not reachable (run scripts/slurm-local-start.sh)"

ok_job=$(submit smoke-ok 'true')
bad_job=$(submit smoke-exit3 'exit 3')

# srun's own notes ("job N queued and waiting for resources" while the batch jobs are ahead of it)
# go to stderr; only the task's stdout is compared.
err=$(mktemp)
trap 'rm -f "$err"' EXIT
out=$(timeout 20 srun -J smoke-srun -t 1 -D /tmp echo smoke-srun-ok 2>"$err") ||
  fail "srun failed: $(tr '\n' ' ' <"$err")"
[ "$out" = smoke-srun-ok ] || fail "srun printed '${out//$'\n'/ }' instead of smoke-srun-ok"

ok_acct="" bad_acct=""
while :; do
  ok_acct=$(acct_of "$ok_job") bad_acct=$(acct_of "$bad_job")
  [ "$ok_acct" = "COMPLETED 0:0" ] && [ "$bad_acct" = "FAILED 3:0" ] && break
  [ "$(date +%s)" -lt "$DEADLINE" ] || fail "after ${LIMIT}s sacct shows job $ok_job as '${ok_acct:-nothing}' (want COMPLETED 0:0)" \
    "and job $bad_job as '${bad_acct:-nothing}' (want FAILED 3:0)"
  sleep 0.3
done

echo "slurm-local-smoke: OK in $(elapsed)s (job $ok_job COMPLETED 0:0, job $bad_job FAILED 3:0, srun ok)"
