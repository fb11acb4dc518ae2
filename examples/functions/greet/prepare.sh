#!/bin/sh
# The preparation step: runs once on the cluster, after the owner approved the
# upload and before any call (a real function would build or install here).
# It records when it ran; `run` prints that, so a call shows which prepared
# version answered.
set -eu
cd "$(dirname "$0")"
printf 'prepared %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > version
echo "greet: wrote $(cat version)"
