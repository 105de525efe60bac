#!/usr/bin/env bash
# The README's commands as a newcomer types them, in a copy of the checkout that lives in a 0700
# directory (where root clones on a fresh machine: its home). First command 1's scripts/examples
# (this build stands in for what scripts/bootstrap builds), then what the README shows next, from
# the checkout and without options (./flowreg.yaml is the example configuration): flows list, a
# worker in the background, run --wait, runs list and runs show. Checks every output. As root, the
# postgres user cannot enter the 0700 directory: the cluster then lives under /var/lib/flowreg,
# linked from .flowreg/pg; it is stopped and removed at the end.
set -euo pipefail
build_dir=$(cd "$1" && pwd)
source_dir=$(cd "$(dirname "$0")/.." && pwd)
home=$(mktemp -d)  # mode 0700, like /root
checkout="$home/flowreg"
mkdir -p "$checkout/scripts" "$checkout/build/plugins"
cp "$source_dir/flows.example.yaml" "$checkout/"
cp -P "$source_dir/flowreg.yaml" "$checkout/"  # the link to flows.example.yaml
cp "$source_dir/scripts/examples" "$checkout/scripts/"
ln -s "$build_dir/flowreg" "$checkout/build/flowreg"
cp "$build_dir"/plugins/*.so "$checkout/build/plugins/"
worker=
cleanup() {
  if [ -n "$worker" ] && kill -0 "$worker" 2>/dev/null; then
    kill -TERM "$worker"
    wait "$worker" || true
  fi
  local cluster_dir
  cluster_dir=$(cd "$checkout" && build/flowreg db status --json 2>/dev/null |
    sed -n 's/^  "cluster_dir": "\(.*\)",$/\1/p') || true
  (cd "$checkout" && build/flowreg db stop >/dev/null 2>&1) || true
  case "$cluster_dir" in
    /var/lib/flowreg/*/pg) rm -rf "$(dirname "$cluster_dir")" ;;
  esac
  rm -rf "$home"
}
trap cleanup EXIT
out="$home/out"
fail() {
  echo "examples: $1"
  cat "$out"
  exit 1
}
expect() { grep -qF -- "$1" "$out" || fail "missing from the output: $1"; }

# Command 1 (scripts/bootstrap && scripts/examples), from the checkout.
(cd "$checkout" && scripts/examples) >"$out" 2>&1 || fail "scripts/examples failed"
cat "$out"
expect 'flow=word_count'
expect 'output: {"total":9}'
expect 'flow=text_stats'
expect 'output: {"total":3}'
expect 'flow=order_pipeline'
expect 'output: {"ship":{"paid_cents":3097,"shipment_id":"ship-o-42","status":"shipped",'
# The run that waited for its approval (a signal), fulfilled by a child run that slept 2 s and
# shipped; its output is the child's.
expect 'flow=order_approval'
grep -qE '^(delivered|kept: its wait step has not started yet)$' "$out" || fail "no signal sent"
expect '"shipment_id":"ship-o-43","status":"shipped"'
expect 'approve          wait   completed'
expect 'fulfil           flow   completed'
grep -qE '^child: run [0-9a-f-]{36}  flow=order_fulfilment  completed  step fulfil\[0\]$' "$out" ||
  fail "no child run shown"
grep -qE '^parent: run [0-9a-f-]{36}  step fulfil\[0\]$' "$out" || fail "no parent shown"
expect 'flow=order_fulfilment'
expect 'settle           sleep  completed'
# The run whose answer was no: its fulfilment skipped (no child run), the run completed.
expect "approve --data '{\"by\": \"scripts/examples\", \"approved\": false}'"
expect 'fulfil           flow   skipped'
[ "$(grep -c ' skipped ' "$out")" = 1 ] || fail "not 1 skipped step"
[ "$(grep -c '^child: run ' "$out")" = 1 ] || fail "not 1 child run"
[ "$(grep -c '  completed$' "$out")" = 6 ] || fail "not 6 completed runs"
echo "examples: command 1: 6 runs completed with their outputs (a child run among them), 1 step skipped"

# What the README shows next, as written there.
cd "$checkout"
build/flowreg flows list >"$out" 2>&1 || fail "flows list failed"
expect 'word_count  module=examples version='
expect 'order_pipeline  module=examples version='
expect 'order_approval  module=examples version='
expect 'order_fulfilment  module=examples version='
expect 'text_stats  module=text version='
build/flowreg worker 2>"$home/worker.log" &
worker=$!
for _ in $(seq 600); do
  grep -q "serving" "$home/worker.log" && break
  kill -0 "$worker" 2>/dev/null || { cp "$home/worker.log" "$out"; fail "the worker died"; }
  sleep 0.1
done
build/flowreg run word_count --input '{"text": "one two three"}' --wait >"$out" 2>&1 ||
  fail "run --wait failed"
expect 'flow=word_count'
expect 'completed'
expect 'output: {"total":3}'
build/flowreg runs list >"$out" 2>&1 || fail "runs list failed"
[ "$(grep -c ' completed ' "$out")" = 7 ] || fail "runs list does not show 7 completed runs"
id=$(head -n 1 "$out" | cut -d ' ' -f 1)
build/flowreg runs show "$id" >"$out" 2>&1 || fail "runs show failed"
expect "run $id  flow=word_count"
expect 'count'
expect 'total'
kill -TERM "$worker"
wait "$worker" || fail "the worker did not stop cleanly"
worker=
echo "examples: the README's next commands work from the checkout"
