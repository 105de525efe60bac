#!/usr/bin/env bash
# Every command the documentation shows, run as a reader would paste it. README.md and docs/*.md
# are read in the order below; each ```sh block is a list of commands run one by one from the root
# of a copy of the checkout that lives in a 0700 directory (where root clones on a fresh machine:
# its home), with this build's flowreg linked in as build/flowreg and its example plugins copied to
# build/plugins, on an embedded PostgreSQL cluster of its own (as root, under /var/lib/flowreg,
# linked from .flowreg/pg; stopped and removed at the end).
#
#   docs_commands.sh BUILD_DIR
#
# What a ```sh block may hold (docs/development.md, "Documentation", says the same to writers):
#   - a command, continued on the next line after a trailing backslash; it must exit 0;
#   - `#> TEXT` lines right after a command: each TEXT must appear in one line of the command's
#     output (stdout and stderr), `...` standing for any text; `#> (exit N)`: it must exit N;
#   - COMMAND &: started in the background (its own process group); the next command waits until it
#     prints "serving" or "listening on" (a worker, `flowreg serve`); its `#>` lines are checked
#     against what it printed by then. A page is one shell session: jobs are numbered as bash
#     numbers them, and a job started in one block may be stopped in a later one;
#   - kill %N: SIGTERM to job N, which must then exit 0; its `#>` lines are checked against
#     everything it printed. A page must stop what it starts;
#   - RUN_ID: replaced by the first run id (a UUID) in the output of the latest command of the same
#     file that printed one;
#   - ports 8080 and 9464 (`flowreg serve`, `worker --metrics`): replaced by free ports, here and in
#     the copied configuration, so that the test can run beside others.
# Other blocks are not run; their info string says what they are: ```console (a shell session
# shown, not run: the doc says which test runs it), ```text, ```yaml, ```cpp, ```cmake, ```json.
#
# Before running anything it checks the files themselves: README.md at most 200 lines; every
# relative link of README.md and docs/*.md names an existing file (and an existing heading, for a
# #fragment); every fence has one of the info strings above; no `build/flowreg` or `curl` line
# outside a ```sh block. Every failure is reported as FILE:LINE with the command and its output;
# the test goes on to the end and exits 1 if anything failed.
set -uo pipefail
build_dir=$(cd "$1" && pwd)
source_dir=$(cd "$(dirname "$0")/../.." && pwd)
cd "$source_dir"

# Pages not written yet that the docs already link to. A link to one of them is accepted while the
# file is missing, and checked like any other once it exists; remove the entry when it lands.
pending_pages=()

docs=(README.md docs/guide.md docs/flows.md docs/plugins.md docs/cli.md docs/http-api.md
  docs/operations.md docs/limits.md docs/development.md docs/performance.md docs/scale-out.md)
for f in docs/*.md; do  # a page added later is read too, after these
  case " ${docs[*]} " in *" $f "*) ;; *) docs+=("$f") ;; esac
done

failures=0
failed_at=()  # FILE:LINE of each failure, listed again at the end
fail() {  # fail FILE:LINE MESSAGE [OUTPUT_FILE]
  failures=$((failures + 1))
  failed_at+=("$1: $2")
  echo "FAIL $1: $2"
  if [ -n "${3:-}" ] && [ -s "$3" ]; then
    tail -n 40 "$3" | sed 's/^/    | /'
  fi
}

# --- The files themselves -------------------------------------------------------------------------

lines=$(wc -l <README.md)
[ "$lines" -le 200 ] || fail "README.md:1" "README.md has $lines lines; at most 200 (move text into docs/)"

# GitHub's anchor of a heading: lowercase, punctuation other than - and _ dropped, spaces to -.
anchors_of() {
  awk '/^```/ { fence = !fence; next } !fence && /^#+ / { sub(/^#+ +/, ""); print }' "$1" |
    tr '[:upper:]' '[:lower:]' | sed -e 's/[^a-z0-9 _-]//g' -e 's/ /-/g'
}
declare -A anchors  # a page's anchors, one per line between newlines, read once per page

# A few processes per page, none per line or per link: the pages have thousands of lines (a grep
# and a sed per line took a minute of the test's two, and most of its CPU).
for doc in "${docs[@]}"; do
  [ -f "$doc" ] || { fail "$doc:1" "the page is missing"; continue; }
  dir=$(dirname "$doc")
  # Its links outside fenced blocks and outside `code`, [text](target), as LINE<tab>TARGET; the
  # local ones' paths, resolved in one call.
  mapfile -t links < <(awk '/^```/ { fence = !fence; next }
    !fence { t = $0; gsub(/`[^`]*`/, "", t)
             while (match(t, /\]\([^) ]+\)/)) {
               print NR "\t" substr(t, RSTART + 2, RLENGTH - 3); t = substr(t, RSTART + RLENGTH)
             } }' "$doc")
  local_links=()
  paths=()
  for link in "${links[@]}"; do
    target=${link#*$'\t'}
    case "$target" in http://* | https://* | mailto:*) continue ;; esac
    local_links+=("$link")
    path=${target%%#*}
    [ -n "$path" ] && paths+=("$dir/$path")
  done
  resolved=()
  [ ${#paths[@]} -gt 0 ] &&
    mapfile -t resolved < <(realpath -m --relative-to="$source_dir" -- "${paths[@]}")
  i=0
  for link in "${local_links[@]}"; do
    n=${link%%$'\t'*}
    target=${link#*$'\t'}
    path=${target%%#*}
    fragment=
    [[ "$target" == *#* ]] && fragment=${target#*#}
    if [ -z "$path" ]; then
      file=$doc
    else
      file=${resolved[$i]}
      i=$((i + 1))
    fi
    if [ ! -e "$file" ]; then
      case " ${pending_pages[*]} " in
        *" $file "*) continue ;;
      esac
      fail "$doc:$n" "the link ($target) names $file, which does not exist"
      continue
    fi
    if [ -n "$fragment" ] && [ -f "$file" ] && [[ "$file" == *.md ]]; then
      [ -n "${anchors[$file]+x}" ] || anchors[$file]=$'\n'$(anchors_of "$file")$'\n'
      [[ "${anchors[$file]}" == *$'\n'"$fragment"$'\n'* ]] ||
        fail "$doc:$n" "the link ($target): $file has no heading #$fragment"
    fi
  done

  # Fences: an info string from the list; nothing a reader would paste outside ```sh.
  n=0
  kind=
  while IFS= read -r text || [ -n "$text" ]; do
    n=$((n + 1))
    if [[ "$text" =~ ^\`\`\`(.*)$ ]]; then
      if [ -z "$kind" ]; then
        kind=${BASH_REMATCH[1]}
        case "$kind" in
          sh | console | text | yaml | cpp | cmake | json) ;;
          "") fail "$doc:$n" "a fence without an info string: sh (run by this test), console, text, yaml, cpp, cmake or json"; kind=none ;;
          *) fail "$doc:$n" "fence info string '$kind': use sh (run by this test), console, text, yaml, cpp, cmake or json" ;;
        esac
      else
        kind=
      fi
    elif [ -n "$kind" ] && [ "$kind" != sh ] && [[ "$text" =~ ^[[:space:]]*(build/flowreg|curl)[[:space:]] ]]; then
      fail "$doc:$n" "a command a reader would paste, in a \`\`\`$kind block: put it in a \`\`\`sh block, where this test runs it"
    fi
  done <"$doc"
done

# --- The commands -----------------------------------------------------------------------------------

command -v curl >/dev/null ||
  { echo "FAIL: curl is not installed, and the docs' HTTP examples use it (apt-get install curl)"; exit 1; }

home=$(mktemp -d)  # mode 0700, like /root
checkout="$home/flowreg"
mkdir -p "$checkout/build/plugins"
cp "$source_dir/flows.example.yaml" "$checkout/"
cp -P "$source_dir/flowreg.yaml" "$checkout/"  # the link to flows.example.yaml
ln -s "$build_dir/flowreg" "$checkout/build/flowreg"
cp "$build_dir"/plugins/*.so "$checkout/build/plugins/"

# Two free TCP ports for 8080 and 9464, below the kernel's ephemeral range: a port from that range
# can be taken, between this check and the bind, as the local end of another test's connection.
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$ephemeral_low" -gt 12000 ] 2>/dev/null || ephemeral_low=32768
free_port() {
  local p
  while :; do
    p=$((10000 + RANDOM % (ephemeral_low - 10000)))
    case " ${taken_ports:-} " in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      taken_ports="${taken_ports:-} $p"
      echo "$p"
      return
    fi
  done
}
http_port=$(free_port)
taken_ports=" $http_port"
metrics_port=$(free_port)
sed -i "s/127\.0\.0\.1:8080/127.0.0.1:$http_port/" "$checkout/flows.example.yaml"
ports() { sed -e "s/:8080\b/:$http_port/g" -e "s/:9464\b/:$metrics_port/g" <<<"$1"; }

# diagnose PID: what a process that hangs is doing (its state and, with gdb, every thread's stack),
# so that a hang in CI can be read from the log.
diagnose() {
  local pid=$1
  ps -o pid=,stat=,wchan:30=,etime=,args= -p "$pid" --ppid "$pid" 2>/dev/null | sed 's/^/    | ps: /'
  if command -v gdb >/dev/null; then
    timeout 60 gdb -p "$pid" -batch -ex 'thread apply all bt 12' 2>/dev/null |
      grep -E '^(Thread|#)' | head -n 150 | sed 's/^/    | gdb: /'
  fi
}

# stop_job PID: SIGTERM to its process group, then wait (bounded: a process that ignores it is
# shown, killed and reported). Sets stop_rc to its exit status.
stop_job() {
  local pid=$1 where=${2:-} _
  kill -TERM -- "-$pid" 2>/dev/null
  for _ in $(seq 600); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    [ -n "$where" ] && fail "$where" "still running 60 s after SIGTERM: killed (its state below)"
    diagnose "$pid"
    kill -KILL -- "-$pid" 2>/dev/null
  fi
  wait "$pid"
  stop_rc=$?
}

job_pids=()  # this block's background commands, %1 first
job_logs=()
cleanup() {
  local pid cluster_dir
  for pid in "${job_pids[@]}"; do
    [ -n "$pid" ] && stop_job "$pid" 2>/dev/null
  done
  cluster_dir=$(cd "$checkout" && build/flowreg db status --json 2>/dev/null |
    sed -n 's/^  "cluster_dir": "\(.*\)",$/\1/p') || true
  (cd "$checkout" && build/flowreg db stop >/dev/null 2>&1) || true
  case "$cluster_dir" in
    /var/lib/flowreg/*/pg) rm -rf "$(dirname "$cluster_dir")" ;;
  esac
  rm -rf "$home"
}
trap cleanup EXIT

# "TEXT" of a #> line as a glob that matches a line holding it: ... is any text.
glob_of() {
  local t=$1 g=
  t=${t//\\/\\\\}
  t=${t//\*/\\*}
  t=${t//\?/\\?}
  t=${t//\[/\\[}
  g=${t//.../*}
  printf '*%s*' "$g"
}

# printed OUTPUT_FILE TEXT: whether a line of the output holds TEXT (a #> line).
printed() {
  local glob line
  glob=$(glob_of "$2")
  while IFS= read -r line || [ -n "$line" ]; do
    # shellcheck disable=SC2053  # a glob on purpose
    [[ "$line" == $glob ]] && return 0
  done <"$1"
  return 1
}

# check_output WHERE OUTPUT_FILE EXPECTATIONS(newline-separated)
check_output() {
  local where=$1 out=$2 want
  while IFS= read -r want; do
    [ -z "$want" ] && continue
    printed "$out" "$want" || fail "$where" "the output lacks what the doc says it prints: $want" "$out"
  done <<<"$3"
}

# all_printed OUTPUT_FILE EXPECTATIONS: whether every #> line is there yet.
all_printed() {
  local want
  while IFS= read -r want; do
    [ -z "$want" ] && continue
    printed "$1" "$want" || return 1
  done <<<"$2"
}

end_file() {  # a page must stop the commands it started in the background
  local where=$1 i
  for i in "${!job_pids[@]}"; do
    [ -z "${job_pids[$i]}" ] && continue
    fail "$where" "the page leaves %$((i + 1)) running (end it with kill %$((i + 1)))" "${job_logs[$i]}"
    stop_job "${job_pids[$i]}" "$where" 2>/dev/null
  done
  job_pids=()
  job_logs=()
}

commands_run=0
past_deadline=0
deadline=$((SECONDS + ${DOCS_DEADLINE_S:-420}))  # CTest stops the test at 600 s
run_command() {  # run_command FILE LINE COMMAND EXPECTED_RC EXPECTATIONS
  local doc=$1 n=$2 cmd=$3 want_rc=$4 expect=$5 where="$1:$2" stripped out rc i pid id started
  if [ "$SECONDS" -ge "$deadline" ] && [[ "$cmd" != kill\ %* ]]; then
    # Stopped before CTest's timeout, so that the summary is printed; jobs are still ended.
    [ "$past_deadline" = 1 ] ||
      fail "$where" "the test has run ${SECONDS} s: this command and the ones after it are not run"
    past_deadline=1
    return
  fi
  commands_run=$((commands_run + 1))
  if [[ "$cmd" == *RUN_ID* ]]; then
    if [ -z "$run_id" ]; then
      fail "$where" "RUN_ID, but no command of $doc printed a run id before it"
      return
    fi
    cmd=${cmd//RUN_ID/$run_id}
  fi
  cmd=$(ports "$cmd")
  expect=$(ports "$expect")
  echo "== $where: $cmd"
  stripped=$(sed -E "s/[[:space:]]+#[^\"']*\$//" <<<"$cmd")
  out="$home/out.$commands_run"

  if [[ "$stripped" =~ ^kill\ %([0-9]+)$ ]]; then
    i=$((BASH_REMATCH[1] - 1))
    pid=${job_pids[$i]:-}
    if [ -z "$pid" ]; then
      [ "$past_deadline" = 1 ] && return  # it was not started
      fail "$where" "kill %$((i + 1)): no such background command is running"
      return
    fi
    stop_job "$pid" "$where"
    rc=$stop_rc
    job_pids[$i]=
    [ "$rc" = "$want_rc" ] || fail "$where" "%$((i + 1)) exited $rc after SIGTERM (expected $want_rc)" "${job_logs[$i]}"
    check_output "$where" "${job_logs[$i]}" "$expect"
    return
  fi

  if [[ "$stripped" == *"&" ]]; then
    (cd "$checkout" && exec setsid bash -c "${stripped%&}") >"$out" 2>&1 &
    pid=$!
    # As bash numbers jobs: one more than the highest still running (%1 again once all ended).
    i=0
    for j in "${!job_pids[@]}"; do [ -n "${job_pids[$j]}" ] && i=$((j + 1)); done
    job_pids[$i]=$pid
    job_logs[$i]=$out
    for _ in $(seq 1200); do  # a first start creates the cluster (initdb): allow 120 s
      grep -qE 'serving|listening on' "$out" && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if ! grep -qE 'serving|listening on' "$out"; then
      fail "$where" "the background command did not get ready (no \"serving\" or \"listening on\")" "$out"
      kill -0 "$pid" 2>/dev/null && diagnose "$pid"
      return
    fi
    for _ in $(seq 300); do  # what it prints next to that line (serve --worker: its worker's)
      all_printed "$out" "$expect" && break
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    check_output "$where" "$out" "$expect"
    return
  fi

  started=$SECONDS
  (cd "$checkout" && timeout 120 bash -c "$cmd") >"$out" 2>&1 </dev/null
  rc=$?
  [ $((SECONDS - started)) -ge 15 ] && echo "(this command took $((SECONDS - started)) s)"
  cat "$out"
  [ -s "$out" ] && [ -n "$(tail -c 1 "$out")" ] && echo  # curl's output ends without a newline
  [ "$rc" = "$want_rc" ] || fail "$where" "exit $rc (expected $want_rc): $cmd" "$out"
  check_output "$where" "$out" "$expect"
  id=$(grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' "$out" | head -n 1)
  [ -n "$id" ] && run_id=$id
  return 0
}

for doc in "${docs[@]}"; do
  [ -f "$doc" ] || continue
  run_id=
  n=0
  in_sh=0
  block_start=0
  pending=      # the command being read (continued lines)
  pending_line=0
  cmd=          # the command read last, waiting for its #> lines
  cmd_line=0
  cmd_rc=0
  cmd_expect=
  flush() {
    if [ -n "$cmd" ]; then run_command "$doc" "$cmd_line" "$cmd" "$cmd_rc" "$cmd_expect"; fi
    cmd=
    cmd_expect=
    cmd_rc=0
  }
  while IFS= read -r text || [ -n "$text" ]; do
    n=$((n + 1))
    if [ "$in_sh" = 0 ]; then
      if [ "$text" = '```sh' ]; then in_sh=1; block_start=$n; fi
      continue
    fi
    if [ "$text" = '```' ]; then
      flush
      in_sh=0
      continue
    fi
    if [ -n "$pending" ]; then  # a continued command
      pending="$pending"$'\n'"$text"
      if [[ "$text" != *\\ ]]; then
        flush
        cmd=$pending
        cmd_line=$pending_line
        pending=
      fi
      continue
    fi
    if [[ "$text" =~ ^#\>\ \(exit\ ([0-9]+)\)$ ]]; then
      cmd_rc=${BASH_REMATCH[1]}
    elif [[ "$text" =~ ^#\>\ (.*)$ ]]; then
      cmd_expect="$cmd_expect${BASH_REMATCH[1]}"$'\n'
    elif [[ "$text" =~ ^[[:space:]]*(#.*)?$ ]]; then
      :  # a comment or a blank line
    elif [[ "$text" == *\\ ]]; then
      pending=$text
      pending_line=$n
    else
      flush
      cmd=$text
      cmd_line=$n
    fi
  done <"$doc"
  [ "$in_sh" = 1 ] && fail "$doc:$block_start" "a \`\`\`sh block that never ends"
  end_file "$doc:$n"
done

echo
echo "docs: $commands_run commands from ${#docs[@]} files in $SECONDS s; $failures failure(s)"
for f in "${failed_at[@]}"; do echo "  FAIL $f"; done
[ "$failures" = 0 ]
