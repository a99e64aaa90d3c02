#!/bin/bash
# How long after a SIGKILL a dead worker's run ends as lost, with the default settings (README,
# Runs on workers). Needs the local PostgreSQL and Redis; makes and drops a database of its own.
# Usage: timeout 120 bash bench/worker_lost.sh   (its waits are loops; the timeout bounds them)
set -e
cd "$(dirname "$0")/.."
DB=killtime_$$
psql -h 127.0.0.1 -U postgres -qc "create database $DB"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB AGENT_EXECUTION=worker REDIS_URL=redis://127.0.0.1:6379/0 CHANNEL_LAYER_PREFIX=killtime$$
.venv/bin/python manage.py migrate -v0 >/dev/null 2>&1
.venv/bin/python manage.py demo_setup --username k --password kill-password >/dev/null 2>&1
.venv/bin/python manage.py run_worker --name doomed > ${TMPDIR:-/tmp}/worker-lost-doomed.log 2>&1 &
DOOMED=$!
sleep 3
RUN=$(.venv/bin/python manage.py shell -c "
from django.contrib.auth import get_user_model
from agents.services import run_create
u = get_user_model().objects.get(username='k')
print(run_create(user_id=u.pk, agent='demo', input={'steps': 50, 'delay': 1}).id)" 2>/dev/null | tail -1)
until grep -q "executing run $RUN" ${TMPDIR:-/tmp}/worker-lost-doomed.log; do sleep 0.1; done
.venv/bin/python manage.py run_worker --name survivor > ${TMPDIR:-/tmp}/worker-lost-survivor.log 2>&1 &
SURVIVOR=$!
sleep 3
kill -9 $DOOMED
T0=$(date +%s.%N)
until [ "$(psql -h 127.0.0.1 -U postgres -d $DB -Atc "select status from agents_agentrun where id='$RUN'")" = "failed" ]; do sleep 0.1; done
T1=$(date +%s.%N)
echo "lost after $(echo "$T1 - $T0" | bc) s: $(psql -h 127.0.0.1 -U postgres -d $DB -Atc "select error from agents_agentrun where id='$RUN'")"
kill -TERM $SURVIVOR; wait $SURVIVOR || true
psql -h 127.0.0.1 -U postgres -qc "drop database $DB with (force)"
