#!/bin/bash
# Counts the hits of sock:inet_sock_set_state twice over the same loopback churn: with ftrace's
# own probe (every event listed in the ring buffer) and with a bpftrace tracepoint program
# (@hits plus the program's recursion_misses from bpftool). A BPF program sees every hit it
# does not count as a recursion miss, so ftrace's listing minus (hits + misses) is the number
# of hits no BPF program ran for. The bpftrace window encloses ftrace's, so that is a lower
# bound: a hit after ftrace stops (a connection still closing) can make it -1.
#   usage: skipped-bpf-events.sh [seconds] [churn command...]
set -euo pipefail
secs=${1:-10}; shift || true
churn=("$@")
[ ${#churn[@]} -gt 0 ] || churn=(./target/release/tcpstate-bench churn --port 24000 --seconds "$secs"
                                 --addresses 8 --clients 2 --mode client-first)
T=/sys/kernel/tracing
[ -e $T/trace ] || mount -t tracefs nodev $T
E=$T/events/sock/inet_sock_set_state
old_buffer=$(cat $T/buffer_size_kb)
bpftrace_pid=; out=
restore() {
  [ -z "$bpftrace_pid" ] || kill "$bpftrace_pid" 2>/dev/null || true
  [ -z "$out" ] || rm -f "$out"
  echo 0 > $E/enable; echo 0 > $E/filter; echo "$old_buffer" > $T/buffer_size_kb; echo > $T/trace
}
trap restore EXIT
echo 0 > $E/enable; echo 'protocol == 6' > $E/filter
echo 450000 > $T/buffer_size_kb; echo > $T/trace   # per CPU: 20 s of the churn below fit

out=$(mktemp)
bpftrace -e 'tracepoint:sock:inet_sock_set_state { @hits = count(); }' > "$out" 2>&1 &
bpftrace_pid=$!
id=
for _ in $(seq 100); do
  id=$(bpftool prog show | awk -F: '/ tracepoint / {print $1}' | tail -1)
  [ -n "$id" ] && break; sleep 0.2
done
if [ -z "$id" ]; then
  cat "$out" >&2; echo "bpftrace's program did not load" >&2; exit 1
fi
sleep 1

echo 1 > $E/enable
"${churn[@]}"
echo 0 > $E/enable

sleep 0.5
# bpftool prints recursion_misses only when it is not 0.
misses=$(bpftool prog show id "$id" | awk '{for (i = 1; i < NF; i++) if ($i == "recursion_misses") print $(i + 1)}')
kill -INT $bpftrace_pid; wait $bpftrace_pid || true
bpftrace_pid=
hits=$(awk '/@hits/ {print $2}' "$out")
listed=$(grep -c inet_sock_set_state $T/trace)
overrun=$(awk '/^overrun/ {s += $2} END {print s}' $T/per_cpu/cpu*/stats)
echo "ftrace listed $listed (overrun $overrun); bpftrace ran $hits, recursion_misses ${misses:-0};" \
     "hits no BPF program ran for: $((listed - hits - ${misses:-0}))"
