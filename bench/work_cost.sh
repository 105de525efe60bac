#!/bin/bash
# work_cost.sh: the server time flowreg.work() spends per run, from one session on an idle
# embedded cluster, so that the figure is the functions' own cost (no other process competes for
# the CPU, no worker, no handler): the precise way to compare two versions of the SQL functions.
# worker_bench measures the whole system (workers, handlers, commits); this isolates the database.
#
# usage: bench/work_cost.sh [--flowreg BIN] [--flow single|chain|rated_high] [--batch LIST] [--runs N]
#                           [--rounds R] [--wal] [--start CALLS] [--sessions S] [--sql FILE]
#                           [--workers N] [--worker-id PREFIX] [--keep]
#   --flowreg BIN  the flowreg binary whose compiled-in functions are measured (default
#                  build/flowreg next to this script's checkout); its plugins are
#                  <its directory>/bench/worker_plugins
#   --flow         bench_single (1 step, default), bench_chain (a -> b -> c) or bench_rated_high
#                  (1 step under a rate limit far above any drain: every claim takes tokens)
#   --batch LIST   work() batch sizes, comma-separated (default 64,512)
#   --runs N       runs started per measurement (default 20000; 6000 is plenty for chain)
#   --rounds R     measurements per batch size (default 2)
#   --wal          also break each measurement's WAL down by record type and by table and index
#                  (pg_waldump --stats of the cluster's WAL: per run, records and bytes of each)
#   --start CALLS  measure starting instead of draining: CALLS one-run calls back to back, CALLS
#                  calls 5 ms apart, and CALLS `SELECT 1` 5 ms apart (the window's floor), then
#                  CALLS calls from each of --sessions sessions at once (pgbench), each series
#                  of calls once with start_runs() and once with start_run() (its short path
#                  for a one-step flow; a chain's start goes through it to start_runs),
#                  R rounds; prints each series' server time per call (pg_stat_user_functions),
#                  the round trip p50 / p99 (psql's \timing, pgbench's log), and per run started
#                  the WAL bytes and the MultiXacts created (pg_control_checkpoint's
#                  next_multixact_id, after a CHECKPOINT)
#   --sessions S   the sessions of --start's last series (default 8)
#   --sql FILE     SQL run once on the cluster before measuring (a changed function, another
#                  fillfactor...): to measure an idea before writing it as a migration
#   --workers N    drain with N `flowreg worker --batch B` processes (serving the flow only)
#                  instead of one psql session: the whole cost of a real drain, its workers' ids,
#                  their heartbeats, handler outputs (`{"ok": true}`) and commits included, as
#                  worker_bench drains (its figures, with --wal, broken down); work()'s time
#                  then includes the waits of its calls for each other's locks
#   --worker-id P  with --workers: worker i's id is P<i> (default: flowreg's HOST:PID:RANDOM);
#                  the id is written into every task claimed and every run completed
#   --keep         keep the scratch directory (cluster data)
#
# Each measurement: N runs started with start_runs() (500 per call), VACUUM ANALYZE, then one
# session calls work() with the previous call's claimed tasks as completions until every run is
# completed. Printed per batch size and round: work() server time per run (pg_stat_user_functions
# total_time, track_functions = 'pl'), its parts (each function's total and self time per run),
# the calls made, the runs left unfinished (0, or the measurement is void), and the WAL the
# cluster wrote per run while starting and while draining (pg_current_wal_insert_lsn; it includes
# autovacuum's, which is part of a run's cost).
# Compare two builds by alternating them, e.g.
#   for i in 1 2; do bench/work_cost.sh --flowreg ../base/build/flowreg
#                    bench/work_cost.sh; done
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
flowreg="$here/../build/flowreg"
flow=single
batches=64,512
runs=20000
rounds=2
keep=0
wal=0
start_calls=0
sessions=8
setup_sql=
workers=0
worker_id=
while [ $# -gt 0 ]; do
  case "$1" in
    --flowreg) flowreg=$2; shift 2 ;;
    --flow) flow=$2; shift 2 ;;
    --batch) batches=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --wal) wal=1; shift ;;
    --start) start_calls=$2; shift 2 ;;
    --sessions) sessions=$2; shift 2 ;;
    --sql) setup_sql=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --worker-id) worker_id=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "work_cost.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$flow" in single|chain|rated_high) ;; *) echo "work_cost.sh: --flow is single, chain or rated_high" >&2; exit 2 ;; esac
[[ "$runs" =~ ^[0-9]+$ ]] && [ "$runs" -ge 500 ] || { echo "work_cost.sh: --runs is a number >= 500" >&2; exit 2; }
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "work_cost.sh: --rounds is a positive number" >&2; exit 2; }
[[ "$start_calls" =~ ^[0-9]+$ ]] || { echo "work_cost.sh: --start is a number of calls" >&2; exit 2; }
[[ "$sessions" =~ ^[1-9][0-9]*$ ]] || { echo "work_cost.sh: --sessions is a positive number" >&2; exit 2; }
[[ "$workers" =~ ^[0-9]+$ ]] || { echo "work_cost.sh: --workers is a number of worker processes" >&2; exit 2; }
[ -z "$worker_id" ] || [ "$workers" -gt 0 ] || { echo "work_cost.sh: --worker-id needs --workers" >&2; exit 2; }
[ "$workers" = 0 ] || [ "$start_calls" = 0 ] || { echo "work_cost.sh: --workers drains; --start measures starting: one or the other" >&2; exit 2; }
[ -z "$setup_sql" ] || [ -r "$setup_sql" ] || { echo "work_cost.sh: cannot read --sql $setup_sql" >&2; exit 2; }
[ -x "$flowreg" ] || { echo "work_cost.sh: no flowreg binary at $flowreg (build first)" >&2; exit 1; }
flowreg=$(cd "$(dirname "$flowreg")" && pwd)/$(basename "$flowreg")
plugins="$(dirname "$flowreg")/bench/worker_plugins"
[ -d "$plugins" ] || { echo "work_cost.sh: no bench plugins at $plugins" >&2; exit 1; }

scratch=$(mktemp -d /tmp/flowreg_work_cost_XXXXXX)
chmod 755 "$scratch"
config="$scratch/flowreg.yaml"
printf 'plugins: {dir: %s, watch: false}\ndatabase: {url: "", data_dir: %s/data}\n' \
  "$plugins" "$scratch" > "$config"
cleanup() {
  "$flowreg" --config "$config" db stop > /dev/null 2>&1 || true
  if [ "$keep" = 1 ]; then echo "kept $scratch"; else rm -rf "$scratch"; fi
}
trap cleanup EXIT

"$flowreg" --config "$config" db migrate > /dev/null
# The worker stores the plugins' flows; it is stopped once they are there.
"$flowreg" --config "$config" worker > "$scratch/worker.log" 2>&1 &
worker=$!
pid_file="$scratch/data/pg/postmaster.pid"
socket=$(sed -n 5p "$pid_file")
port=$(sed -n 4p "$pid_file")
psql_() { psql -h "$socket" -p "$port" -U postgres -d flowreg -XqtA -v ON_ERROR_STOP=1 "$@"; }
slug="bench_$flow"
for _ in $(seq 1 100); do
  version=$(psql_ -c "SELECT version FROM flowreg.flows WHERE slug = '$slug' ORDER BY created_at DESC LIMIT 1")
  [ -n "$version" ] && break
  sleep 0.1
done
kill -TERM "$worker" 2> /dev/null || true
wait "$worker" || true
[ -n "$version" ] || { echo "work_cost.sh: flow $slug was not stored (see $scratch/worker.log)" >&2; keep=1; exit 1; }
psql_ -c "ALTER DATABASE flowreg SET track_functions = 'pl'"
steps=$([ "$flow" = chain ] && echo 3 || echo 1)
if [ -n "$setup_sql" ]; then
  psql_ -f "$setup_sql" > /dev/null
  echo "work_cost: ran $setup_sql before measuring"
fi

lsn() { psql_ -c "SELECT pg_current_wal_insert_lsn()"; }
per_run() { psql_ -c "SELECT round(pg_wal_lsn_diff('$2', '$1') / $3)"; }
if [ "$wal" = 1 ]; then
  # pg_waldump reads the segments themselves: keep them past any checkpoint of the measurement.
  psql_ -c "ALTER SYSTEM SET wal_keep_size = '4GB'"
  psql_ -c "SELECT pg_reload_conf()" > /dev/null
  waldump="$(psql_ -c "SELECT setting FROM pg_config WHERE name = 'BINDIR'")/pg_waldump"
  [ -x "$waldump" ] || { echo "work_cost.sh: no pg_waldump at $waldump" >&2; exit 1; }
fi
# The WAL between two positions, per run, by record type: count and bytes per run of every type
# holding at least 1% of the bytes, the rest summed as "other".
wal_types() {
  "$waldump" -p "$scratch/data/pg/pg_wal" -s "$2" -e "$3" --stats=record 2> /dev/null |
    awk -v runs="$4" -v label="$1" '
      /^[A-Za-z0-9]+\/[A-Za-z0-9_+]+ / {
        gsub(/\([^)]*\)/, ""); type[++k] = $1; n[k] = $2; b[k] = $5; total += $5; count += $2 }
      END {
        if (total == 0) { printf "  %-6s no WAL records read\n", label; exit }
        printf "  %-6s %.0f B, %.2f records per run:", label, total / runs, count / runs
        for (i = 1; i <= k; i++) order[i] = i
        for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++)
          if (b[order[j]] > b[order[i]]) { t = order[i]; order[i] = order[j]; order[j] = t }
        other = 0
        for (i = 1; i <= k; i++) {
          x = order[i]
          if (b[x] >= total / 100) printf " %s %.2f (%.0f B)", type[x], n[x] / runs, b[x] / runs
          else other += b[x]
        }
        printf " other (%.0f B)\n", other / runs
      }'
}

# The same WAL by relation of the flowreg schema (tables and indexes): records and bytes per run of
# each that has at least 1 byte per run. $rels holds "name tablespace/database/filenode" lines.
wal_relations() {
  local out="" name rel line
  while read -r name rel; do
    line=$("$waldump" -p "$scratch/data/pg/pg_wal" -s "$2" -e "$3" -R "$rel" --stats 2> /dev/null |
      awk -v runs="$4" -v name="$name" '$1 == "Total" {
        gsub(/\[[^]]*\]/, ""); if ($5 / runs >= 1) printf " %s %.2f (%.0f B)", name, $2 / runs, $5 / runs }')
    out+=$line
  done <<< "$rels"
  printf '  %-6s by relation, records (bytes) per run:%s\n' "$1" "$out"
}

if [ "$start_calls" -gt 0 ]; then
  # Starting one run per call, as an application does: the server's time per call and the round
  # trip the client sees, back to back and 5 ms apart (worker_bench's latency scenario starts runs
  # 5 ms apart; a CPU that idled between calls makes each call slower, and this shows by how
  # much), then from several sessions at once (what one flow's row lock costs when sessions
  # collide: a MultiXact). `SELECT 1` 5 ms apart is the same window's floor: what any call costs
  # on this machine now.
  bindir=$(psql_ -c "SELECT setting FROM pg_config WHERE name = 'BINDIR'")
  [ -x "$bindir/pgbench" ] || { echo "work_cost.sh: no pgbench at $bindir/pgbench" >&2; exit 1; }
  echo "work_cost --start: $flowreg, flow $slug@$version, $start_calls one-run calls per series and session"
  printf '%-6s %-24s %14s %14s %8s %10s %14s\n' round series "server ms/call" "round trip p50" p99 \
    "WAL B/run" "MultiXacts/run"
  # start_runs with one input, and start_run (its short path for a one-step flow's run; a chain's
  # goes on to start_runs inside it).
  start="SELECT count(*) FROM flowreg.start_runs('$slug', '$version', ARRAY['{}'::jsonb]);"
  start1="SELECT count(*) FROM flowreg.start_run('$slug', '$version', '{}');"
  next_mxid() { psql_ -c "SELECT next_multixact_id FROM pg_control_checkpoint()"; }
  # The n-th in ascending order of the numbers on stdin, as a fraction (0.5: the median).
  quantile() { sort -n | awk -v q="$1" '{ v[NR] = $1 } END { i = int(NR * q + 0.999999); if (i < 1) i = 1; print v[i] }'; }
  for r in $(seq 1 "$rounds"); do
    for series in "start_runs back-to-back" "start_run back-to-back" "start_runs 5 ms apart" \
                  "start_run 5 ms apart" "SELECT 1 5 ms apart" "start_runs $sessions sessions" \
                  "start_run $sessions sessions"; do
      fn=${series%% *}
      case "$fn" in
        SELECT) call="SELECT 1;" ;;
        start_run) call=$start1 ;;
        *) call=$start ;;
      esac
      psql_ -c "TRUNCATE flowreg.runs, flowreg.step_states, flowreg.tasks"
      psql_ -c "CHECKPOINT"
      psql_ -c "SELECT pg_stat_reset()" > /dev/null
      l0=$(lsn)
      m0=$(next_mxid)
      case "$series" in
        *sessions)
          rm -f "$scratch"/pgbench_log.*
          printf '%s\n' "$call" > "$scratch/start.sql"
          (cd "$scratch" && "$bindir/pgbench" -h "$socket" -p "$port" -U postgres -n -l \
             -c "$sessions" -j "$(( sessions < 2 ? sessions : 2 ))" -t "$start_calls" \
             -f "$scratch/start.sql" flowreg > "$scratch/pgbench.out" 2>&1) ||
            { cat "$scratch/pgbench.out" >&2; exit 1; }
          # pgbench's log: client, transaction, latency in microseconds, ...
          times=$(cat "$scratch"/pgbench_log.* | awk '{ printf "%.3f\n", $3 / 1000 }')
          ;;
        *)
          times=$({
            printf '%s\n' '\timing on'
            for _ in $(seq 1 "$start_calls"); do
              printf '%s\n' '\echo call'
              echo "$call"
              case "$series" in *apart) echo "SELECT pg_sleep(0.005);" ;; esac
            done
          } | psql_ | awk '$0 == "call" { mark = 1; next } /^Time:/ { if (mark) print $2; mark = 0 }')
          ;;
      esac
      l1=$(lsn)
      server=- walrun=- mxrun=-
      if [ "$fn" != SELECT ]; then
        started=$(psql_ -c "SELECT count(*) FROM flowreg.runs")
        walrun=$(per_run "$l0" "$l1" "$started")
        psql_ -c "CHECKPOINT"
        mxrun=$(psql_ -c "SELECT round(($(next_mxid)::bigint - $m0) / $started::numeric, 3)")
        sleep 0.6  # a session's counters are flushed when it exits
        server=$(psql_ -c "SELECT round((total_time / calls)::numeric, 3) FROM pg_stat_user_functions WHERE schemaname = 'flowreg' AND funcname = '$fn'")
      fi
      printf '%-6s %-24s %14s %14s %8s %10s %14s\n' "$r" "$series" "$server" \
        "$(echo "$times" | quantile 0.5)" "$(echo "$times" | quantile 0.99)" "$walrun" "$mxrun"
    done
  done
  exit 0
fi

echo "work_cost: $flowreg, flow $slug@$version ($steps step(s)), $runs runs per measurement," \
  "drained by $([ "$workers" -gt 0 ] && echo "$workers flowreg worker process(es)" || echo "one psql session")"
printf '%-6s %-6s %10s %7s %5s %11s  %s\n' batch round "us/run" calls left "WAL B/run" "parts: function total/self us per run"
for b in ${batches//,/ }; do
  for r in $(seq 1 "$rounds"); do
    psql_ -c "TRUNCATE flowreg.runs, flowreg.step_states, flowreg.tasks"
    # A checkpoint now leaves none due (checkpoint_timeout) during the measurement: the full-page
    # images that follow one would count in its WAL, and its writes would compete for the disk.
    psql_ -c "CHECKPOINT"
    l0=$(lsn)
    for _ in $(seq 1 $((runs / 500))); do
      echo "SELECT count(*) FROM flowreg.start_runs('$slug', '$version', array_fill('{}'::jsonb, ARRAY[500]));"
    done | psql_ > /dev/null
    l1=$(lsn)
    psql_ -c "VACUUM ANALYZE flowreg.runs, flowreg.tasks, flowreg.step_states"
    l2=$(lsn)
    flows="[{\"slug\": \"$slug\", \"version\": \"$version\"}]"
    psql_ -c "SELECT pg_stat_reset()" > /dev/null
    if [ "$workers" -gt 0 ]; then
      pids=()
      for i in $(seq 1 "$workers"); do
        id=()
        [ -z "$worker_id" ] || id=(--id "$worker_id$i")
        "$flowreg" --config "$config" worker --flows "$slug" --batch "$b" "${id[@]}" \
          > "$scratch/worker_$b.$r.$i.log" 2>&1 &
        pids+=($!)
      done
      # Until every run is completed (a count of runs every 0.2 s: reads, no WAL), at most 600 s.
      for _ in $(seq 1 3000); do
        [ "$(psql_ -c "SELECT count(*) FROM flowreg.runs WHERE status <> 'completed'")" = 0 ] && break
        sleep 0.2
      done
      l3=$(lsn)
      kill -TERM "${pids[@]}" 2> /dev/null || true
      wait "${pids[@]}" || true
    else
      {
        echo "\\set c '[]'"
        for _ in $(seq 1 $(( (runs * steps) / b + 10 ))); do
          echo "SELECT coalesce(jsonb_agg(jsonb_build_object('id', id, 'attempt', attempt, 'output', 1)) FILTER (WHERE kind = 'claimed'), '[]') AS c FROM flowreg.work('bench', :'c'::jsonb, '[]', '$flows', $b, 60000) \\gset"
        done
      } | psql_ > /dev/null
      l3=$(lsn)
    fi
    sleep 0.6  # the session's counters are flushed when it exits
    left=$(psql_ -c "SELECT count(*) FROM flowreg.runs WHERE status <> 'completed'")
    read -r us calls < <(psql_ -F' ' -c "SELECT round((total_time * 1000 / $runs)::numeric, 2), calls FROM pg_stat_user_functions WHERE schemaname = 'flowreg' AND funcname = 'work'")
    parts=$(psql_ -c "SELECT string_agg(funcname || ' ' || round((total_time * 1000 / $runs)::numeric, 1) || '/' || round((self_time * 1000 / $runs)::numeric, 1), ', ' ORDER BY total_time DESC) FROM pg_stat_user_functions WHERE schemaname = 'flowreg' AND funcname NOT IN ('work', 'start_runs', 'upsert_flow')")
    walrun="$(per_run "$l0" "$l1" "$runs")+$(per_run "$l2" "$l3" "$runs")"
    printf '%-6s %-6s %10s %7s %5s %11s  %s\n' "$b" "$r" "$us" "$calls" "$left" "$walrun" "$parts"
    if [ "$wal" = 1 ]; then
      rels=$(psql_ -F' ' -c "SELECT c.relname, coalesce(nullif(c.reltablespace, 0), d.dattablespace) || '/' || d.oid || '/' || pg_relation_filenode(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_database d ON d.datname = current_database() WHERE n.nspname = 'flowreg' AND c.relkind IN ('r', 'i') ORDER BY c.relname")
      wal_types start "$l0" "$l1" "$runs"
      wal_relations start "$l0" "$l1" "$runs"
      wal_types drain "$l2" "$l3" "$runs"
      wal_relations drain "$l2" "$l3" "$runs"
    fi
  done
done
