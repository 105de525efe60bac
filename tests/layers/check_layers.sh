#!/usr/bin/env bash
# The include graph of core/src by folder: fails when the folders include each other in a cycle
# (a folder's files including another folder's, which include the first again, directly or
# through others), or when a front end includes the other (cli/ and server/ depend on app/, never
# on each other). Prints the graph as DOT with --dot.
#
#   tests/layers/check_layers.sh [SOURCE_DIR] [--dot]
set -euo pipefail
src=${1:-$(dirname "$0")/../..}
src=$(cd "$src" && pwd)/core/src
dot=0
[ "${2:-}" = "--dot" ] && dot=1

# One line per edge: "FROM TO FILE", for each #include "DIR/..." of a file in FROM naming another
# folder of core/src.
edges=$(
  cd "$src"
  for dir in */; do
    dir=${dir%/}
    { grep -Ho '^#include "[a-z_]*/' "$dir"/*.hpp "$dir"/*.cpp 2>/dev/null || true; } |
      sed 's|^\([^:]*\):#include "\([a-z_]*\)/$|\2 \1|' |
      while read -r to file; do
        if [ "$to" != "$dir" ] && [ -d "$to" ]; then echo "$dir $to $file"; fi
      done
  done | sort -u
)

if [ "$dot" = 1 ]; then
  echo "digraph core_src {"
  echo "$edges" | awk '{print "  \"" $1 "\" -> \"" $2 "\";"}' | sort -u
  echo "}"
  exit 0
fi

status=0
# tsort names the members of each loop it finds on stderr ("tsort: NAME").
loops=$(echo "$edges" | awk 'NF {print $1, $2}' | sort -u | tsort 2>&1 >/dev/null) || true
if [ -n "$loops" ]; then
  echo "layers: core/src's folders include each other in a cycle:"
  echo "$loops" | sed -n 's/^tsort: \([a-z_]*\)$/  \1/p'
  echo "layers: the includes that make it (FROM TO FILE):"
  echo "$edges" | sed 's/^/  /'
  status=1
fi
# The two front ends share app/, never each other.
for rule in "cli server" "server cli"; do
  bad=$(echo "$edges" | awk -v a="${rule% *}" -v b="${rule#* }" '$1 == a && $2 == b {print "  " $3}')
  if [ -n "$bad" ]; then
    echo "layers: ${rule% *}/ includes ${rule#* }/ (the front ends share app/ instead):"
    echo "$bad"
    status=1
  fi
done
# The engine never includes a front end or the application layer.
for front in app cli server; do
  bad=$(echo "$edges" | awk -v f="$front" '$2 == f && $1 != "cli" && $1 != "server" {print "  " $3 " (" $1 "/ -> " f "/)"}')
  if [ -n "$bad" ]; then
    echo "layers: below the front ends, files include $front/:"
    echo "$bad"
    status=1
  fi
done
[ "$status" = 0 ] && echo "layers: $(echo "$edges" | awk '{print $1, $2}' | sort -u | wc -l) folder dependencies, no cycle, cli/ and server/ apart"
exit $status
