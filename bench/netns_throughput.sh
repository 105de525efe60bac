#!/usr/bin/env bash
# Throughput over TCP (+ TLS) with 1, 2 and 3 worker hosts: the network of tests/netns/lib.sh (a
# database host and three worker hosts, network namespaces on this machine), one `flowreg worker`
# per host. For each host count: start RUNS runs (half word_count, a map step over 4 lines: 6
# tasks; half wprobe_chain: 3 tasks) in one statement, time until every run is finished, and print
# the tasks each host ran per second and the total. A benchmark, not a test: it asserts only that
# every run completed. As root.
#
#   bench/netns_throughput.sh BUILD_DIR [RUNS] [CONCURRENCY]
#
# All hosts share this machine's cores: past the cores' count, more hosts add connections and
# contention, not CPU.
set -euo pipefail
BUILD=$(cd "$1" && pwd)
RUNS=${2:-2000}
CONCURRENCY=${3:-8}
FLOWREG=$BUILD/flowreg
HERE=$(cd "$(dirname "$0")/../tests/netns" && pwd)
source "$HERE/lib.sh"

if ! reason=$(netns_preflight); then
  echo "netns_throughput: cannot run: $reason" >&2
  exit 1
fi
WORK=$(mktemp -d /tmp/flowreg-netns-bench-XXXXXX)
chmod 755 "$WORK"
trap netns_cleanup EXIT
trap 'exit 130' INT TERM
cd "$WORK"

netns_network 3
netns_tls
netns_database
netns_worker_config
chain_log=$WORK/chain.log
: >"$chain_log"

printf '%-6s %-6s %-7s %-8s %-9s %-11s %-9s %s\n' hosts runs tasks seconds "WAL/run" "dead tuples" "conns/host" "tasks/s per host ... total"
for hosts in 1 2 3; do
  WORKER_PIDS=()
  for i in $(seq 1 "$hosts"); do start_worker "$i" --concurrency "$CONCURRENCY"; done
  wait_until 60 "$hosts worker host(s) connected" \
    "SELECT count(DISTINCT client_addr) = $hosts FROM pg_stat_activity
     WHERE client_addr <<= '$NET_PREFIX.0/24' AND client_addr <> '$DB_ADDR'"
  wait_until 60 "the flows stored" \
    "SELECT count(DISTINCT slug) = 2 FROM flowreg.flows WHERE slug IN ('word_count', 'wprobe_chain')"
  sql "TRUNCATE flowreg.runs, flowreg.step_states, flowreg.tasks" >/dev/null
  sql "CHECKPOINT" >/dev/null
  conns=$(sql "SELECT string_agg(n::text, ',') FROM (SELECT client_addr, count(*) n FROM pg_stat_activity
               WHERE client_addr <<= '$NET_PREFIX.0/24' AND client_addr <> '$DB_ADDR' GROUP BY 1) x")
  lsn0=$(sql "SELECT pg_current_wal_lsn()")
  t0=$(now_ms)
  start_runs word_count $((RUNS / 2)) \
    "jsonb_build_object('text', E'a b\\nc d e\\nf\\ng h i j', 'i', i)"
  start_runs wprobe_chain $((RUNS - RUNS / 2)) "jsonb_build_object('log', '$chain_log', 'n', i)"
  wait_until 600 "the runs finishing" "SELECT count(*) = 0 FROM flowreg.runs WHERE status = 'started'"
  t1=$(now_ms)
  wal=$(sql "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / $RUNS)")
  dead=$(sql "SELECT sum(n_dead_tup) FROM pg_stat_user_tables WHERE schemaname = 'flowreg'")
  completed=$(sql "SELECT count(*) FROM flowreg.runs WHERE status = 'completed'")
  [ "$completed" = "$RUNS" ] || die "$((RUNS - completed)) runs did not complete"
  seconds=$(awk -v ms=$((t1 - t0)) 'BEGIN { printf "%.2f", ms / 1000 }')
  # Tasks leave the queue when done: they are counted from their step states, each step's tasks
  # for the worker that recorded its last one (a map step's may have run on several).
  rates=$(sql "SELECT string_agg(worker_id || ' ' || round(n / ($((t1 - t0)) / 1000.0)), '  '
                 ORDER BY worker_id) || '  total ' || round(sum(n) / ($((t1 - t0)) / 1000.0))
               FROM (SELECT worker_id, sum(task_count) n FROM flowreg.steps GROUP BY 1) x")
  tasks=$(sql "SELECT sum(task_count) FROM flowreg.steps")
  printf '%-6s %-6s %-7s %-8s %-9s %-11s %-9s %s\n' "$hosts" "$RUNS" "$tasks" "$seconds" "${wal}B" "$dead" "$conns" "$rates"
  for pid in "${WORKER_PIDS[@]}"; do kill -TERM "$pid"; done
  for pid in "${WORKER_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
done
