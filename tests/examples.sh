#!/usr/bin/env bash
# The README's main command (scripts/examples) on this build, with a copy of flows.example.yaml
# whose data_dir is a scratch directory, so that the embedded cluster is this test's own. Checks
# that every example run completed with its expected output, then stops the cluster.
set -euo pipefail
build_dir=$(cd "$1" && pwd)
source_dir=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
chmod 0755 "$work"  # under root the cluster runs as the postgres user, which must reach it
cleanup() {
  "$build_dir/flowreg" --config "$work/flows.yaml" db stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
# database.data_dir is relative to the working directory (the checkout, where scripts/examples
# runs): point it at the scratch directory.
sed "s|^  data_dir: .flowreg$|  data_dir: $work/data|" "$source_dir/flows.example.yaml" \
  >"$work/flows.yaml"
grep -q "data_dir: $work/data" "$work/flows.yaml" || {
  echo "examples: no data_dir line to point elsewhere"
  exit 1
}
BUILD_DIR="$build_dir" CONFIG="$work/flows.yaml" "$source_dir/scripts/examples" \
  >"$work/out" 2>&1 || {
  cat "$work/out"
  exit 1
}
cat "$work/out"
expect() {
  grep -qF -- "$1" "$work/out" || { echo "examples: missing from the output: $1"; exit 1; }
}
expect 'flow=word_count'
expect 'output: {"total":9}'
expect 'flow=text_stats'
expect 'output: {"total":3}'
expect 'flow=order_pipeline'
expect 'output: {"ship":{"paid_cents":3097,"shipment_id":"ship-o-42","status":"shipped",'
[ "$(grep -c '  completed$' "$work/out")" = 3 ] || { echo "examples: not 3 completed runs"; exit 1; }
echo "examples: 3 runs completed with their outputs"
