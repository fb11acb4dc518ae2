#!/usr/bin/env bash
# `make run`: the whole service on this machine. Server on 127.0.0.1:8000
# (SQLite, in-process notifications, so exactly one server process) and a local
# agent serving the example functions. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
PORT=${PORT:-8000}
VAR=${HPCSERA_VAR_DIR:-$PWD/var}
export HPCSERA_VAR_DIR=$VAR
# No Celery worker here: run_timers sends callbacks itself, even when the
# shell has a REDIS_URL.
export CELERY_BROKER_URL=""
mkdir -p "$VAR/functions"
chmod 700 "$VAR"

"$PY" manage.py migrate -v0
# The example functions are copied once; edit or add your own in var/functions.
# Folders there (greet) are examples of uploads, not functions to copy.
for f in examples/functions/*; do
  [ -f "$f" ] || continue
  [ -e "$VAR/functions/$(basename "$f")" ] || cp -p "$f" "$VAR/functions/"
done

USER_NAME=${HPCSERA_DEMO_USER:-demo}
client_token=$("$PY" manage.py issue_token --user "$USER_NAME" --create-user \
  --roles POST_Job,GET_JobStatus,POST_Code --name "make run client" --lifetime 86400)
agent_token=$("$PY" manage.py issue_token --user "$USER_NAME" --create-user \
  --roles GET_Job,UPDATE_JobStatus,GET_Code --name "make run agent" --lifetime 86400)

# A local OpenID provider stands in for the institution's single sign-on, so
# the web UI can be tried: user $USER_NAME, a fresh password on every start.
PROVIDER_PORT=${PROVIDER_PORT:-8001}
eval "$("$PY" -m tests.oidc_provider.dev "$VAR" "http://127.0.0.1:$PORT" \
  "$PROVIDER_PORT" "$USER_NAME")"

# The provider's first user has subject "1": that is the demo user there.
"$PY" manage.py link_identity --user "$USER_NAME" --issuer "$OIDC_OP_ISSUER" \
  --subject 1 >/dev/null

umask 077
cat > "$VAR/agent.toml" <<TOML
server = "http://127.0.0.1:$PORT"
token = "$agent_token"
site = "local"
functions_dir = "$VAR/functions"
state_dir = "$VAR/agent-state"

[deploy]
# Installs code uploaded with POST_Code once you approve it in the web UI.
enabled = true
TOML
umask 022

server_pid="" agent_pid="" provider_pid="" timers_pid=""
cleanup() {
  # INT is gunicorn's quick shutdown; it also ends the agent's open long-poll.
  [ -n "$server_pid" ] && kill -INT "$server_pid" 2>/dev/null
  [ -n "$provider_pid" ] && kill -INT "$provider_pid" 2>/dev/null
  [ -n "$agent_pid" ] && kill -TERM "$agent_pid" 2>/dev/null
  [ -n "$timers_pid" ] && kill -TERM "$timers_pid" 2>/dev/null
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

DJANGO_SETTINGS_MODULE=tests.oidc_provider.settings "$VENV/bin/gunicorn" -c /dev/null \
  -b "127.0.0.1:$PROVIDER_PORT" --threads 4 --log-level warning tests.oidc_provider.wsgi &
provider_pid=$!

# gunicorn.conf.py holds the server settings; one worker, since the embedded
# default keeps notifications inside one process.
"$VENV/bin/gunicorn" -b "127.0.0.1:$PORT" --workers 1 --access-logfile - hpcsera.wsgi &
server_pid=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
"$VENV/bin/hpcsera-agent" -c "$VAR/agent.toml" run &
agent_pid=$!
# Deadlines of virtual calls, and callbacks (no broker here: sent in-process).
"$PY" manage.py run_timers &
timers_pid=$!
sleep 1

cat <<MSG

HPCSerA runs on http://127.0.0.1:$PORT (user '$USER_NAME').
Client token (shown once; POST_Job, GET_JobStatus and POST_Code, valid 24 h):

  $client_token

Call the example function:

  curl -s -X POST -H "Authorization: Bearer $client_token" "http://127.0.0.1:$PORT/$USER_NAME/function/hello?name=Ada"

Upload a function; it is installed once you approve it under Requests:

  printf '#!/bin/sh\\necho uploaded\\n' > /tmp/up.sh
  curl -s -H "Authorization: Bearer $client_token" -F function=up -F script=@/tmp/up.sh "http://127.0.0.1:$PORT/api/v1/code"

Web UI: http://127.0.0.1:$PORT/ui/ — log in as '$USER_NAME' with password
'$DEMO_PASSWORD' at the local test identity provider. API docs: /api/docs/

Functions live in $VAR/functions. Ctrl-C stops everything.

MSG
wait
