# Shared by tests/netns/netns_suite.sh and bench/netns_throughput.sh (sourced, bash).
#
# A small network of Linux network namespaces on this machine: a switch namespace holding a bridge,
# a database host and worker hosts, each joined to the bridge by a veth pair. The addresses
# (10.213.77.0/24) exist only inside these namespaces: the root namespace gets no address, no
# route and no interface. PostgreSQL (flowreg's embedded cluster, database.listen with TLS) runs in
# the database host; real `flowreg worker` processes run in the worker hosts.
#
# Everything made here is removed by netns_cleanup, which the caller runs from an EXIT trap.
#
# Needs: root (CAP_NET_ADMIN, CAP_SYS_ADMIN), ip (iproute2), openssl, psql, the built flowreg and
# the plugins text, orders and wprobe (v1).

NET_PREFIX=10.213.77
DB_ADDR=$NET_PREFIX.1
P="fr$$"  # names of namespaces and links: unique per run, at most 15 characters with suffixes
NS_SW=${P}sw
NS_DB=${P}db
WORKER_PIDS=()

log() { printf '[netns %s] %s\n' "$(date -u +%H:%M:%S.%3N)" "$*"; }
die() {
  printf 'netns: FAILED: %s\n' "$*" >&2
  exit 1
}
now_ms() { date +%s%3N; }

ns_worker() { echo "${P}w$1"; }
worker_addr() { echo "$NET_PREFIX.$((10 + $1))"; }

# Whether this machine can build the network; prints the reason when it cannot.
netns_preflight() {
  if [ "$(id -u)" != 0 ]; then
    echo "not root: creating network namespaces needs CAP_NET_ADMIN and CAP_SYS_ADMIN"
    return 1
  fi
  for tool in ip openssl psql; do
    if ! command -v "$tool" >/dev/null; then
      echo "'$tool' is not installed (apt-get install iproute2 openssl postgresql-client-15)"
      return 1
    fi
  done
  local probe="${P}probe"
  if ! ip netns add "$probe" 2>/tmp/netns_probe_$$.err; then
    echo "cannot create a network namespace: $(cat /tmp/netns_probe_$$.err)"
    rm -f /tmp/netns_probe_$$.err
    return 1
  fi
  ip netns del "$probe"
  rm -f /tmp/netns_probe_$$.err
  return 0
}

# netns_network N: the switch, the database host and N worker hosts.
netns_network() {
  local n=$1
  ip netns add "$NS_SW"
  ip -n "$NS_SW" link add br0 type bridge
  ip -n "$NS_SW" link set br0 up
  ip -n "$NS_SW" link set lo up
  netns_host "$NS_DB" "${P}d" "$DB_ADDR"
  for i in $(seq 1 "$n"); do netns_host "$(ns_worker "$i")" "${P}w$i" "$(worker_addr "$i")"; done
}

# netns_host NS LINK ADDRESS: a namespace with lo and eth0 (ADDRESS/24), its peer LINK on the
# bridge.
netns_host() {
  local ns=$1 link=$2 address=$3
  ip netns add "$ns"
  ip link add "${link}h" type veth peer name "$link"
  ip link set "${link}h" netns "$ns"
  ip link set "$link" netns "$NS_SW"
  ip -n "$NS_SW" link set "$link" master br0 up
  ip -n "$ns" link set "${link}h" name eth0
  ip -n "$ns" addr add "$address/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
}

# Cuts worker host I off the network (its veth's switch end goes down), or joins it again.
cut_host() { ip -n "$NS_SW" link set "${P}w$1" down; }
join_host() { ip -n "$NS_SW" link set "${P}w$1" up; }

# Kills every process of a namespace with SIGKILL.
kill_namespace() {
  local pids
  pids=$(ip netns pids "$1" 2>/dev/null || true)
  [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
}

netns_cleanup() {
  set +e
  for pid in "${WORKER_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  if [ -n "${DB_CONFIG:-}" ] && [ -f "$DB_CONFIG" ]; then
    ip netns exec "$NS_DB" "$FLOWREG" --config "$DB_CONFIG" db stop >/dev/null 2>&1
  fi
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${P}"); do
    kill_namespace "$ns"
    ip netns del "$ns" 2>/dev/null
  done
  if [ -n "${WORK:-}" ] && [ -z "${NETNS_KEEP:-}" ]; then rm -rf "$WORK"; fi
}

# A CA and a server certificate for DB_ADDR, made with the openssl CLI; and a second CA that signed
# nothing here.
netns_tls() {
  local dir=$WORK/tls
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=flowreg netns test CA" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=another CA" \
      -keyout other_ca.key -out other_ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=$DB_ADDR" -keyout server.key \
      -out server.csr 2>/dev/null
    printf 'subjectAltName = IP:%s\n' "$DB_ADDR" >san.ext
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
      -extfile san.ext -out server.crt 2>/dev/null
  ) || die "openssl could not make the test certificates"
  chmod 600 "$dir/server.key"
}

# The database host: the embedded cluster listening on DB_ADDR with TLS, admitting the lower half
# of the /24 (.0-.127; an "outsider" at .200 is on the same link but not admitted); the audit
# trigger; DB_URL (verify-full against the test CA) for the workers.
netns_database() {
  DB_CONFIG=$WORK/db.yaml
  cat >"$DB_CONFIG" <<EOF
module: netns_db
plugins: {dir: plugins.d, watch: false}
database:
  data_dir: db
  listen:
    addresses: [$DB_ADDR]
    allow: [$NET_PREFIX.0/25]
    ssl_cert_file: tls/server.crt
    ssl_key_file: tls/server.key
EOF
  mkdir -p "$WORK/plugins.d"
  ip netns exec "$NS_DB" "$FLOWREG" --config "$DB_CONFIG" db migrate >"$WORK/db_migrate.log" 2>&1 ||
    die "db migrate in the database host failed: $(tail -20 "$WORK/db_migrate.log")"
  DB_URL=$(ip netns exec "$NS_DB" "$FLOWREG" --config "$DB_CONFIG" db url \
    --sslrootcert "$WORK/tls/ca.crt") || die "flowreg db url failed"
  # Every recording of a task's result: a task recorded twice has two rows. A single step's task
  # leaves the queue when its result is recorded (a DELETE of the started row); a map step's task
  # is marked completed (an UPDATE), and leaves when its step completes. Nothing in this suite
  # fails a task for good or cancels a run, the other deletions of a started task.
  sql "CREATE TABLE IF NOT EXISTS public.netns_audit (task_id bigint, attempt int, worker_id text,
         run_id uuid, step_slug text, started_at timestamptz, at timestamptz DEFAULT clock_timestamp());
       CREATE OR REPLACE FUNCTION public.netns_audit() RETURNS trigger LANGUAGE plpgsql AS \$\$
       BEGIN
         IF TG_OP = 'DELETE' THEN
           INSERT INTO public.netns_audit (task_id, attempt, worker_id, run_id, step_slug, started_at)
           VALUES (OLD.id, OLD.attempt, OLD.worker_id, OLD.run_id, OLD.step_slug, OLD.started_at);
         ELSE
           INSERT INTO public.netns_audit (task_id, attempt, worker_id, run_id, step_slug, started_at)
           VALUES (NEW.id, NEW.attempt, NEW.worker_id, NEW.run_id, NEW.step_slug, NEW.started_at);
         END IF;
         RETURN NULL;
       END \$\$;
       DROP TRIGGER IF EXISTS netns_audit ON flowreg.tasks;
       DROP TRIGGER IF EXISTS netns_audit_done ON flowreg.tasks;
       CREATE TRIGGER netns_audit AFTER UPDATE ON flowreg.tasks FOR EACH ROW
         WHEN (NEW.status = 'completed' AND NEW.finished_at IS DISTINCT FROM OLD.finished_at)
         EXECUTE FUNCTION public.netns_audit();
       CREATE TRIGGER netns_audit_done AFTER DELETE ON flowreg.tasks FOR EACH ROW
         WHEN (OLD.status = 'started')
         EXECUTE FUNCTION public.netns_audit();" >/dev/null
}

# sql TEXT: runs TEXT over TCP + TLS from the database host; prints unaligned rows.
sql() { ip netns exec "$NS_DB" psql "$DB_URL" -X -v ON_ERROR_STOP=1 -qtA -c "$1"; }

# The configuration of a worker host: the database URL, the plugins, the YAML flows.
netns_worker_config() {
  WORKER_CONFIG=$WORK/worker.yaml
  mkdir -p "$WORK/worker_plugins"
  for so in "$BUILD/plugins/text.so" "$BUILD/plugins/orders.so" "$BUILD/tests/plugins/wprobe_v1.so"; do
    [ -f "$so" ] || die "$so is not built"
    cp "$so" "$WORK/worker_plugins/"
  done
  cat >"$WORKER_CONFIG" <<EOF
module: netns
plugins: {dir: worker_plugins, watch: false}
database:
  url: "$DB_URL"
  data_dir: worker_data
flows:
  - slug: word_count
    steps:
      - {slug: split, handler: text.split_lines}
      - {slug: count, kind: map, handler: text.count_words, depends_on: [split]}
      - {slug: total, handler: text.sum, depends_on: [count]}
  - slug: order_pipeline
    options: {max_attempts: 3, base_delay: 100ms, max_delay: 2s, timeout: 30s}
    steps:
      - {slug: fetch, handler: orders.fetch}
      - {slug: charge, handler: orders.charge, depends_on: [fetch], options: {max_attempts: 5}}
      - {slug: reserve, handler: orders.reserve, depends_on: [fetch]}
      - {slug: ship, handler: orders.ship, depends_on: [charge, reserve]}
EOF
}

# start_worker I [ARGS...]: a `flowreg worker` with id wI in worker host I; its log is
# $WORK/wI.log (appended).
start_worker() {
  local i=$1
  shift
  ip netns exec "$(ns_worker "$i")" "$FLOWREG" --config "$WORKER_CONFIG" ${NETNS_GLOBAL_ARGS:-} worker --id "w$i" "$@" \
    >>"$WORK/w$i.log" 2>&1 &
  WORKER_PIDS+=($!)
}

# The newest stored version of a flow.
flow_version() {
  sql "SELECT version FROM flowreg.flows WHERE slug = '$1' ORDER BY created_at DESC LIMIT 1"
}

# wait_until SECONDS WHAT SQL: polls SQL (a boolean) until true; fails after SECONDS.
wait_until() {
  local limit=$1 what=$2 query=$3
  local deadline=$(($(date +%s) + limit))
  until [ "$(sql "$query" 2>/dev/null)" = t ]; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$what: not within ${limit}s"
    sleep 0.2
  done
}

# start_runs FLOW N INPUT_SQL: N runs of FLOW, input INPUT_SQL (an SQL jsonb expression of i).
start_runs() {
  local flow=$1 n=$2 input=$3 version
  version=$(flow_version "$flow")
  [ -n "$version" ] || die "flow $flow is not stored (did a worker start?)"
  sql "SELECT count(*) FROM flowreg.start_runs('$flow', '$version',
         ARRAY(SELECT $input FROM generate_series(1, $n) AS i))" >/dev/null
}
