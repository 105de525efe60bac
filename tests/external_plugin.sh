#!/usr/bin/env bash
# Installs this build of flowreg into a temporary prefix, builds tests/external_plugin against it
# from a separate CMake tree, and checks that the installed flowreg loads the result; builds and runs
# examples/general_tools.cpp against the installed headers too, which must not include the test seam
# sync_point.hpp (not installed).
set -euo pipefail
build_dir=$1
source_dir=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" >/dev/null
if [ -e "$work/prefix/include/flowreg/sync_point.hpp" ]; then
  echo "the test seam flowreg/sync_point.hpp was installed" >&2
  exit 1
fi
cmake -S "$source_dir/tests/external_plugin" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
  -DCMAKE_BUILD_TYPE=Release -DFLOWREG_EXAMPLES_DIR="$source_dir/examples" >/dev/null
cmake --build "$work/build" >/dev/null
mkdir -m 0755 "$work/plugins"
cp "$work/build/hello.so" "$work/plugins/"
cd "$work"
"$work/prefix/bin/flowreg" plugins check "$work/plugins/hello.so"
"$work/prefix/bin/flowreg" --plugins "$work/plugins" flows show hello_flow --json | grep -q '"handler": "hello.greet"'
tools_output=$("$work/build/general_tools")
grep -q "all promises held" <<<"$tools_output"
echo "external plugin: built against the install tree and loaded"
