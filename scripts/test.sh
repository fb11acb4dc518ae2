#!/usr/bin/env bash
# The whole suite. As root, the local Slurm cluster is started first (it is
# idempotent); without Slurm the batch tests skip, unless HPCSERA_REQUIRE_SLURM=1
# makes them fail, as in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

if [ "$(id -u)" = 0 ] && [ "${HPCSERA_SKIP_SLURM:-0}" != 1 ]; then
  scripts/slurm-local-start.sh
fi
# The browser tests drive Debian's Chromium; Playwright downloads no browser.
if [ ! -x "${HPCSERA_CHROMIUM:-/usr/bin/chromium}" ] && [ "$(id -u)" = 0 ]; then
  echo "test.sh: installing chromium for the browser tests" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium >/dev/null
fi
exec "$VENV/bin/python" -m pytest "$@"
