#!/usr/bin/env bash
# Workers on several hosts, tested as hosts: a database host and three worker hosts, each its own
# network namespace on this machine (tests/netns/lib.sh builds the network), real `flowreg worker`
# processes connecting over TCP with TLS (sslmode=verify-full against a CA made here).
#
#   netns_suite.sh BUILD_DIR
#
# Checks, in order, and prints a table of what it measured:
#   1. access: the URL of `flowreg db url` works with verify-full; another CA, no TLS, a wrong
#      password are refused; db.password is 0600; the password is in no log;
#   2. mixed load: thousands of runs (word_count with a map step, order_pipeline with a diamond and
#      a retry, wprobe_chain of three steps) all complete with the right outputs;
#   3. a host cut off mid-task: its tasks are taken over and finished by the others, its late
#      results are refused, and once joined again it serves new tasks without a restart;
#   4. a host's processes SIGKILLed: nothing lost;
#   5. the database host restarted: every worker reconnects by itself;
# and through all of it: no task's result recorded twice.
#
# Cannot build namespaces (not root, no ip): exit 77, which CTest reports as "Skipped" (not run)
# — except under CI (CI set), where that is a failure.
set -euo pipefail
BUILD=$(cd "$1" && pwd)
FLOWREG=$BUILD/flowreg
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"

LEASE_S=2
RUNS_WORD=${NETNS_RUNS_WORD:-1200}
RUNS_ORDER=${NETNS_RUNS_ORDER:-600}
RUNS_CHAIN=${NETNS_RUNS_CHAIN:-600}

if ! reason=$(netns_preflight); then
  echo "netns: NOT RUN: $reason"
  if [ -n "${CI:-}" ]; then
    echo "netns: FAILED: CI must be able to run the network namespace suite" >&2
    exit 1
  fi
  exit 77
fi
[ -x "$FLOWREG" ] || die "$FLOWREG is not built"

WORK=$(mktemp -d /tmp/flowreg-netns-XXXXXX)
chmod 755 "$WORK"
trap netns_cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"

declare -A RESULT  # name -> measured value, printed at the end
table() {
  echo
  echo "== network namespace suite: results"
  printf '%-58s %s\n' "measure" "value"
  for key in "${!RESULT[@]}"; do printf '%-58s %s\n' "$key" "${RESULT[$key]}"; done | sort
}

log "network: switch, database host, 3 worker hosts on $NET_PREFIX.0/24"
netns_network 3
netns_tls
netns_database
log "database host up; url: $(sed -E 's#(://[^:]+:)[^@]+@#\1****@#' <<<"$DB_URL")"

# --- 1. access ----------------------------------------------------------------------------------
password_file=$WORK/db/db.password
[ "$(stat -c %a "$password_file")" = 600 ] || die "$password_file is not mode 600"
password=$(cat "$password_file")
[ "${#password}" -ge 32 ] || die "the generated password is too short"
w1=$(ns_worker 1)
ip netns exec "$w1" psql "$DB_URL" -XqtA -c "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()" \
  | grep -qx t || die "a worker host cannot connect with the URL of flowreg db url over TLS"
other_ca=${DB_URL/ca.crt/other_ca.crt}
if ip netns exec "$w1" psql "$other_ca" -XqtA -c "SELECT 1" >/dev/null 2>&1; then
  die "a server certificate signed by another CA was accepted (verify-full)"
fi
no_tls=$(sed -E 's#\?.*$#?sslmode=disable#' <<<"$DB_URL")
if ip netns exec "$w1" psql "$no_tls" -XqtA -c "SELECT 1" >/dev/null 2>&1; then
  die "a connection without TLS was accepted"
fi
wrong=$(sed -E "s#(://[^:]+:)[^@]+@#\\1wrong$RANDOM@#" <<<"$DB_URL")
if ip netns exec "$w1" psql "$wrong" -XqtA -c "SELECT 1" >/dev/null 2>&1; then
  die "a wrong password was accepted"
fi
# pg_hba admits the configured network only: a host on the same link outside it is refused.
netns_host "${P}out" "${P}o" "$NET_PREFIX.200"
if ip netns exec "${P}out" psql "$DB_URL" -XqtA -c "SELECT 1" >"$WORK/outsider.log" 2>&1; then
  die "a host outside database.listen.allow was admitted"
fi
grep -q "no pg_hba.conf entry" "$WORK/outsider.log" ||
  die "the outsider was refused, but not by pg_hba: $(cat "$WORK/outsider.log")"
RESULT["access: verify-full ok; other CA, no TLS, wrong password, outside network"]="refused"
# The recipe for a server of one's own: a role (no superuser) owning a database, and
# `flowreg db migrate` from another host with its URL.
sql "CREATE ROLE netns_owner LOGIN PASSWORD 'netns-owner-secret'" >/dev/null
sql "CREATE DATABASE netns_own OWNER netns_owner" >/dev/null
cat >"$WORK/own.yaml" <<EOF
database:
  url: "postgresql://netns_owner:netns-owner-secret@$DB_ADDR:5432/netns_own?sslmode=verify-full&sslrootcert=$WORK/tls/ca.crt"
EOF
ip netns exec "$w1" "$FLOWREG" --config "$WORK/own.yaml" db migrate >"$WORK/own_migrate.log" 2>&1 ||
  die "db migrate from a worker host into a database owned by a plain role failed: $(tail -5 "$WORK/own_migrate.log")"
RESULT["access: db migrate of a plain role's database from another host"]=$(tail -1 "$WORK/own_migrate.log")

netns_worker_config
for i in 1 2 3; do start_worker "$i" --lease "${LEASE_S}s" --concurrency 8 ${NETNS_WORKER_ARGS:-}; done
wait_until 60 "the three workers registering their flows" \
  "SELECT count(DISTINCT slug) = 3 FROM flowreg.flows
   WHERE slug IN ('word_count', 'order_pipeline', 'wprobe_chain')"
wait_until 60 "three worker hosts connected" \
  "SELECT count(DISTINCT client_addr) = 3 FROM pg_stat_activity
   WHERE client_addr <<= '$NET_PREFIX.0/24' AND client_addr <> '$DB_ADDR'"

# --- 2. mixed load -----------------------------------------------------------------------------
chain_log=$WORK/chain.log
: >"$chain_log"
chmod 666 "$chain_log"
log "mixed load: $RUNS_WORD word_count, $RUNS_ORDER order_pipeline, $RUNS_CHAIN wprobe_chain runs"
t0=$(now_ms)
# word_count: i % 4 + 1 lines, line k of k + 1 words: the total is known.
start_runs word_count "$RUNS_WORD" \
  "jsonb_build_object('text', (SELECT string_agg(repeat('w ', k + 1), E'\\n')
                               FROM generate_series(1, i % 4 + 1) AS k), 'i', i)"
start_runs order_pipeline "$RUNS_ORDER" "jsonb_build_object('order_id', 'o' || i)"
start_runs wprobe_chain "$RUNS_CHAIN" "jsonb_build_object('log', '$chain_log', 'n', i)"
total_runs=$((RUNS_WORD + RUNS_ORDER + RUNS_CHAIN))
wait_until 200 "the mixed load finishing" \
  "SELECT count(*) = 0 FROM flowreg.runs WHERE status = 'started'"
t1=$(now_ms)
completed=$(sql "SELECT count(*) FROM flowreg.runs WHERE status = 'completed'")
tasks=$(sql "SELECT count(*) FROM public.netns_audit")
RESULT["mixed load: runs started"]=$total_runs
RESULT["mixed load: runs completed"]=$completed
RESULT["mixed load: runs lost (not completed)"]=$((total_runs - completed))
RESULT["mixed load: tasks / seconds"]="$tasks / $(((t1 - t0) / 1000)).$(((t1 - t0) % 1000 / 100))"
[ "$completed" = "$total_runs" ] ||
  die "$((total_runs - completed)) of $total_runs runs did not complete: $(sql "SELECT status, flow_slug, error FROM flowreg.runs WHERE status <> 'completed' LIMIT 5")"
# Outputs: word_count's total is sum over k of (k + 1) words; the chain passes n on.
wrong_word=$(sql "SELECT count(*) FROM flowreg.runs r WHERE flow_slug = 'word_count'
  AND r.output IS DISTINCT FROM jsonb_build_object('total',
      (SELECT sum(k + 1) FROM generate_series(1, (r.input->>'i')::int % 4 + 1) AS k)::int)")
wrong_chain=$(sql "SELECT count(*) FROM flowreg.runs WHERE flow_slug = 'wprobe_chain'
  AND output->'c'->>'n' IS DISTINCT FROM input->>'n'")
wrong_order=$(sql "SELECT count(*) FROM flowreg.runs WHERE flow_slug = 'order_pipeline'
  AND output->'ship' IS NULL")
RESULT["mixed load: wrong outputs"]=$((wrong_word + wrong_chain + wrong_order))
[ "$wrong_word" = 0 ] || die "$wrong_word word_count runs have a wrong total: $(sql "SELECT input, output FROM flowreg.runs WHERE flow_slug = 'word_count' LIMIT 2")"
[ "$wrong_chain" = 0 ] || die "$wrong_chain wprobe_chain runs lost their input on the way"
[ "$wrong_order" = 0 ] || die "$wrong_order order_pipeline runs have no shipment"
per_host=$(sql "SELECT string_agg(worker_id || '=' || n, ' ' ORDER BY worker_id) FROM
  (SELECT worker_id, count(*) n FROM public.netns_audit GROUP BY 1) x")
RESULT["mixed load: tasks per host"]=$per_host
for i in 1 2 3; do
  grep -q "w$i=" <<<"$per_host" || die "worker host $i ran no task of the mixed load ($per_host)"
done

# --- 3. a host cut off mid-task ----------------------------------------------------------------
log "cut: slow tasks claimed by worker host 1 (the others paused), then host 1 cut off"
kill -STOP "${WORKER_PIDS[1]}" "${WORKER_PIDS[2]}"
start_runs wprobe_single 16 "jsonb_build_object('log', '$chain_log', 'n', i, 'sleep_ms', 1500)"
wait_until 30 "worker host 1 running tasks" \
  "SELECT count(*) >= 2 FROM flowreg.tasks WHERE worker_id = 'w1' AND status = 'started'
   AND flow_slug = 'wprobe_single'"
held_attempts=$(sql "SELECT string_agg(id || ':' || attempt, ',') FROM flowreg.tasks
                     WHERE worker_id = 'w1' AND status = 'started'")
held=$(sed -E 's/:[0-9]+//g' <<<"$held_attempts")
cut_at=$(now_ms)
cut_host 1
kill -CONT "${WORKER_PIDS[1]}" "${WORKER_PIDS[2]}"
log "cut worker host 1 holding tasks $held"
wait_until 60 "the tasks of the cut-off host finishing elsewhere" \
  "SELECT count(DISTINCT task_id) = $(tr ',' '\n' <<<"$held" | wc -l) FROM public.netns_audit
   WHERE task_id IN ($held) AND worker_id <> 'w1'"
done_at=$(now_ms)
reclaim_ms=$(sql "SELECT (extract(epoch FROM min(started_at)) * 1000)::bigint - $cut_at || ' / ' ||
                  (extract(epoch FROM max(started_at)) * 1000)::bigint - $cut_at || ' ms'
                  FROM public.netns_audit WHERE task_id IN ($held) AND worker_id <> 'w1'")
RESULT["cut: tasks held by the cut-off host"]=$(tr ',' '\n' <<<"$held" | wc -l)
RESULT["cut: time from cut to tasks claimed elsewhere, first / last (lease ${LEASE_S}s)"]=$reclaim_ms
RESULT["cut: time from cut to tasks finished elsewhere (handlers of 1.5 s)"]="$((done_at - cut_at)) ms"
wait_until 90 "the slow chains finishing without worker host 1" \
  "SELECT count(*) = 0 FROM flowreg.runs WHERE status = 'started'"
sleep 1
# It serves again without a restart, as soon as it reaches the database: work waits for it when
# the link comes back, and the other hosts are paused until it has finished a task (else they
# would take all of it).
kill -STOP "${WORKER_PIDS[1]}" "${WORKER_PIDS[2]}"
start_runs wprobe_chain 300 "jsonb_build_object('log', '$chain_log', 'n', i)"
join_at=$(now_ms)
join_host 1
log "worker host 1 joined again"
wait_until 90 "worker host 1 serving again" \
  "SELECT count(*) > 0 FROM public.netns_audit WHERE worker_id = 'w1'
   AND at > to_timestamp($join_at / 1000.0)"
resumed_ms=$(sql "SELECT (extract(epoch FROM min(at)) * 1000)::bigint - $join_at
                  FROM public.netns_audit WHERE worker_id = 'w1'
                  AND at > to_timestamp($join_at / 1000.0)")
kill -CONT "${WORKER_PIDS[1]}" "${WORKER_PIDS[2]}"
RESULT["cut: host 1 serving again after the link is back (same process)"]="first task ${resumed_ms} ms after"
kill -0 "${WORKER_PIDS[0]}" || die "worker 1 exited after the cut"
# Its late results. The worker sends them once it reaches the database again, and the database
# refuses them (their attempt is no longer current: logged "was not recorded"), or the worker
# drops them itself (its renewal was refused: "lost the lease"; or its loop gave its tasks up
# while cut off: no line). Whatever the worker does, the database must refuse a result of the
# attempt the cut-off host held: replayed here from that host, as it would have sent it.
refused_pattern="was not recorded \\(its attempt is no longer current\\)|lost the lease of task"
deadline=$(($(date +%s) + 15))
until grep -Eq "$refused_pattern" "$WORK/w1.log" || [ "$(date +%s)" -ge "$deadline" ]; do sleep 0.2; done
RESULT["cut: late results refused or dropped, as logged by worker 1"]=$(grep -Ec "$refused_pattern" "$WORK/w1.log" || true)
replay=$(sed -E 's/([0-9]+):([0-9]+)/{"id": \1, "attempt": \2, "output": {"late": true}}/g' <<<"$held_attempts")
rejected=$(ip netns exec "$(ns_worker 1)" psql "$DB_URL" -XqtA \
  -c "SELECT cardinality(flowreg.complete_tasks('[$replay]'::jsonb))")
RESULT["cut: late results replayed from host 1 / refused by the database"]="$(tr ',' '\n' <<<"$held" | wc -l) / $rejected"
[ "$rejected" = "$(tr ',' '\n' <<<"$held" | wc -l)" ] ||
  die "the database accepted late results of the cut-off host ($rejected refused)"
late=$(sql "SELECT count(*) FROM public.netns_audit WHERE task_id IN ($held) AND worker_id = 'w1'")
late_out=$(sql "SELECT count(*) FROM public.netns_audit a JOIN flowreg.steps s USING (run_id, step_slug)
                WHERE a.task_id IN ($held) AND s.output ? 'late'")
[ "$late" = 0 ] && [ "$late_out" = 0 ] || die "late results of the cut-off host were recorded"
wait_until 90 "the runs after the cut finishing" \
  "SELECT count(*) = 0 FROM flowreg.runs WHERE status = 'started'"

# --- 4. a host's processes SIGKILLed -----------------------------------------------------------
log "kill: every process of worker host 2, mid-load"
phase=$(sql "SELECT clock_timestamp()")
start_runs wprobe_chain 200 "jsonb_build_object('log', '$chain_log', 'n', i, 'sleep_ms', 300)"
start_runs word_count 200 "jsonb_build_object('text', E'a b\\nc d e', 'i', 1)"
wait_until 30 "worker host 2 holding tasks" \
  "SELECT count(*) >= 1 FROM flowreg.tasks WHERE worker_id = 'w2' AND status = 'started'"
kill_namespace "$(ns_worker 2)"
killed_at=$(now_ms)
wait_until 120 "every run finishing without worker host 2" \
  "SELECT count(*) = 0 FROM flowreg.runs WHERE status = 'started'"
after_kill=$(sql "SELECT count(*) FROM flowreg.runs
                  WHERE created_at >= '$phase' AND status = 'completed'")
RESULT["kill: runs started / completed after SIGKILL of host 2"]="400 / $after_kill"
RESULT["kill: time from SIGKILL to the last run finished"]="$(($(now_ms) - killed_at)) ms"
[ "$after_kill" = 400 ] || die "runs were lost with worker host 2: $after_kill of 400 completed"
start_worker 2 --lease "${LEASE_S}s" --concurrency 8

# --- 5. the database host restarted ------------------------------------------------------------
log "restart: the database host's PostgreSQL"
wait_until 60 "three worker hosts connected before the restart" \
  "SELECT count(DISTINCT client_addr) = 3 FROM pg_stat_activity
   WHERE client_addr <<= '$NET_PREFIX.0/24' AND client_addr <> '$DB_ADDR'"
ip netns exec "$NS_DB" "$FLOWREG" --config "$DB_CONFIG" db stop >/dev/null
sleep 2
ip netns exec "$NS_DB" "$FLOWREG" --config "$DB_CONFIG" db migrate >/dev/null
up_at=$(now_ms)
deadline=$(($(date +%s) + 60))
until [ "$(sql "SELECT count(DISTINCT client_addr) FROM pg_stat_activity
              WHERE client_addr <<= '$NET_PREFIX.0/24' AND client_addr <> '$DB_ADDR'
              AND pid <> pg_backend_pid()")" = 3 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || die "not every worker host reconnected within 60 s"
  sleep 0.1
done
RESULT["restart: time from the database up to all 3 hosts connected"]="$(($(now_ms) - up_at)) ms"
# WORKER_PIDS: w1, w2 (killed), w3, w2 again.
for k in 0 2 3; do
  kill -0 "${WORKER_PIDS[$k]}" 2>/dev/null || die "a worker exited during the database restart"
done
start_runs word_count 300 "jsonb_build_object('text', E'a b\\nc', 'i', 2)"
wait_until 90 "runs after the restart finishing" \
  "SELECT count(*) = 0 FROM flowreg.runs WHERE status = 'started'"
served=$(sql "SELECT count(DISTINCT worker_id) FROM public.netns_audit
              WHERE at > to_timestamp($up_at / 1000.0)")
RESULT["restart: hosts that ran tasks after the restart"]=$served

# --- through all of it -------------------------------------------------------------------------
all_runs=$(sql "SELECT count(*) FROM flowreg.runs")
all_done=$(sql "SELECT count(*) FROM flowreg.runs WHERE status = 'completed'")
double=$(sql "SELECT count(*) FROM (SELECT task_id FROM public.netns_audit GROUP BY 1
              HAVING count(*) > 1) x")
# Every task of a completed step was recorded: the steps' task counts against the audit.
unrecorded=$(sql "SELECT (SELECT sum(task_count) FROM flowreg.steps WHERE status = 'completed')
                  - (SELECT count(DISTINCT task_id) FROM public.netns_audit)")
RESULT["all: runs started / completed / lost"]="$all_runs / $all_done / $((all_runs - all_done))"
RESULT["all: double-recorded results"]=$double
RESULT["all: completed tasks missing from the audit"]=$unrecorded
for f in "$WORK"/w*.log "$WORK"/db_migrate.log "$(readlink -f "$WORK/db/pg")/../pg.log"; do
  if [ -f "$f" ] && grep -qF "$password" "$f"; then die "the password is in $f"; fi
done
RESULT["all: logs holding the password"]=0
table
[ "$double" = 0 ] || die "$double task results were recorded twice"
[ "$unrecorded" = 0 ] || die "the audit missed $unrecorded recordings"
[ "$all_runs" = "$all_done" ] || die "$((all_runs - all_done)) runs did not complete"
echo "netns: PASSED"
