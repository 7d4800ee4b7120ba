#!/usr/bin/env bash
# Runs every scenario of BENCHMARKS.md (`just bench`): release build, one gateway pinned
# to core 0, the load generator pinned to core 1, loopback only. Results go to
# target/bench/results.jsonl (one JSON object per run) and a summary table is printed.
# The scenarios marked "(embedded)" run the all-in-one `herald` on its in-memory engine
# (no Redis) in the gateway's place, pinned to core 0 with everything it runs.
#
# When run as root, everything runs inside a network namespace made for the run: its
# loopback has no firewall rules or connection tracking (on this machine Docker's rules
# add about 20 % to every loopback packet). HERALD_BENCH_NETNS=0 runs on the host.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p ws-gateway -p herald-bench -p broadcaster -p herald
bin=$PWD/target/release
out=$PWD/target/bench
mkdir -p "$out"
: >"$out/results.jsonl"
secret=bench-secret-0123456789abcdef
ulimit -n "$(ulimit -Hn)"

ns=""
NS=()
if [[ ${HERALD_BENCH_NETNS:-1} == 1 && $(id -u) == 0 ]] && command -v ip >/dev/null; then
    ns=herald-bench-$$
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    # More ephemeral ports: every run leaves its client sockets in TIME_WAIT, and a
    # crowded port space makes each later connect() search longer.
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
    NS=(ip netns exec "$ns")
fi
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ -n $ns ]]; then ip netns del "$ns" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
echo "bench: network namespace: ${ns:-none (host loopback)}"

free_port() { "${NS[@]}" python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
gport=$(free_port)
aport=$(free_port)
xport=$(free_port)
# Redis shares core 1 with the load generator: core 0 is the gateway's alone. Left
# unpinned, the scheduler moved Redis onto the gateway's core in some runs and those runs
# measured Redis as much as Herald (HTTP publishing fell from ~20,000 to 13,000/s).
"${NS[@]}" taskset -c 1 redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no >"$out/redis.log" 2>&1 &
redis=$!
pids+=("$redis")
for _ in $(seq 50); do "${NS[@]}" redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done

gw=""
# Starts a fresh gateway on core $1 (default 0); per-IP limits raised for load.
start_gw() {
    stop_gw
    HERALD_REDIS_URL=redis://127.0.0.1:$rport HERALD_JWT_SECRET=$secret HERALD_LISTEN=127.0.0.1:$gport \
        HERALD_MAX_CONNECTIONS_PER_IP=100000 HERALD_CONNECT_RATE_PER_IP=100000 \
        HERALD_RATE_LIMIT_MESSAGES=100000000 HERALD_LOG=warn \
        "${NS[@]}" taskset -c "${1:-0}" "$bin/ws-gateway" >>"$out/gateway.log" 2>&1 &
    gw=$!
    pids+=("$gw")
    for _ in $(seq 50); do "${NS[@]}" python3 -c "import socket; socket.create_connection(('127.0.0.1',$gport),0.2)" 2>/dev/null && break; sleep 0.1; done
}
stop_gw() {
    if [[ -n $gw ]]; then kill "$gw" 2>/dev/null || true; wait "$gw" 2>/dev/null || true; gw=""; fi
}
results="$out/results.jsonl"
errs=run
# shellcheck source=run.sh
source crates/herald-bench/run.sh
target=(--url "ws://127.0.0.1:$gport/ws" --secret "$secret")

# Connection setup first, while no earlier run's sockets crowd the port space.
start_gw
run "4. connection setup 15k" connections "${target[@]}" --pid "$gw" --count 15000 --hold 1 --connect-concurrency 1000
stop_gw
"${NS[@]}" taskset -c 0 "$bin/herald-bench" raw-server --listen "127.0.0.1:$xport" --subscribers 15000 --duration 0 >/dev/null 2>&1 &
rp=$!
pids+=("$rp")
sleep 0.5
run "5. raw baseline: bare TCP connection setup 15k" connections --raw --url "tcp://127.0.0.1:$xport" --pid "$rp" --count 15000 --hold 1 --connect-concurrency 1000
kill "$rp" 2>/dev/null || true
wait "$rp" 2>/dev/null || true
start_gw
run "4. idle connections 19k" connections "${target[@]}" --pid "$gw" --count 19000 --hold 10

start_gw
for rate in 2 5 10 20; do
    run "1. fan-out 10k subscribers, $rate pub/s" fanout "${target[@]}" --pid "$gw" --subscribers 10000 --rate "$rate" --duration 10 --payload 100
done
run "1. fan-out 10k subscribers, 40 pub/s" fanout "${target[@]}" --pid "$gw" --subscribers 10000 --rate 40 --duration 10 --payload 100
run "1. fan-out 10k subscribers, saturation" fanout "${target[@]}" --pid "$gw" --subscribers 10000 --rate 0 --publishers 4 --window 64 --duration 10 --payload 100
start_gw
run "2. latency 1k subscribers, 100 pub/s" fanout "${target[@]}" --pid "$gw" --subscribers 1000 --rate 100 --duration 20 --payload 100
start_gw
run "2. latency 1 subscriber, 200 pub/s" fanout "${target[@]}" --pid "$gw" --subscribers 1 --rate 200 --duration 10 --payload 100
start_gw
run "3. 10k own channels + shared" fanout "${target[@]}" --pid "$gw" --subscribers 10000 --channels 10000 --shared-every 10 --rate 1000 --duration 10 --payload 100
# A presence flood on one channel: 50 churners subscribe and unsubscribe as fast as their
# replies come back (each cycle one join and one leave to each of 10 join_leave
# listeners) while 100 plain subscribers of the channel get 100 pub/s, 3 s before the
# flood (the latency baseline) and 10 s during it. Every subscribe, unsubscribe and
# broadcast is a client frame against the per-connection rate limit: start_gw's
# HERALD_RATE_LIMIT_MESSAGES=100000000 per the default 60 s window is ~1.7 M frames/s per
# connection, far above any churner's pace (at the default 100 per 60 s each churner
# gets `rate_limited` after ~50 cycles and the publisher after 100 messages; the report
# counts them under `errors`), and its per-IP limits let the 161 connections in.
presence=(presence "${target[@]}" --listeners 10 --subscribers 100 --churners 50 --rate 100 --duration 10 --baseline 3)
start_gw
run "7. presence flood, 50 churners flat out" "${presence[@]}" --pid "$gw"
start_gw
run "7. presence flood, 1,000 joins/s" "${presence[@]}" --pid "$gw" --joins-per-sec 1000

# The raw baseline: pre-encoded frames over plain tokio TCP on the same cores.
raw() {
    local name=$1 subs=$2 rate=$3
    shift 3
    "${NS[@]}" taskset -c 0 "$bin/herald-bench" raw-server --listen "127.0.0.1:$xport" --subscribers "$subs" --rate "$rate" --duration 10 --payload 100 "$@" >/dev/null 2>&1 &
    local rp=$!
    pids+=("$rp")
    sleep 0.5
    run "$name" fanout --raw --url "tcp://127.0.0.1:$xport" --subscribers "$subs" --payload 100 --pid "$rp"
    kill "$rp" 2>/dev/null || true
    wait "$rp" 2>/dev/null || true
}
for rate in 2 20; do raw "5. raw baseline 10k subscribers, $rate msg/s" 10000 "$rate"; done
raw "5. raw baseline 10k subscribers, saturation" 10000 0
raw "5. raw baseline 1k subscribers, 100 msg/s" 1000 100
# The latency floor: one loop writing each frame to every socket (no queues, no tasks).
raw "5. raw direct writes 10k subscribers, 2 msg/s" 10000 2 --direct
raw "5. raw direct writes 1k subscribers, 100 msg/s" 1000 100 --direct

# HTTP publishing: the broadcaster on core 0; gateway, Redis and the bench on core 1.
start_gw 1
HERALD_REDIS_URL=redis://127.0.0.1:$rport HERALD_API_KEY=bench-key HERALD_LISTEN=127.0.0.1:$aport HERALD_LOG=warn \
    "${NS[@]}" taskset -c 0 "$bin/broadcaster" >"$out/broadcaster.log" 2>&1 &
bc=$!
pids+=("$bc")
sleep 1
run "6. HTTP publish via broadcaster" fanout "${target[@]}" --pid "$bc" --subscribers 1 --rate 0 --duration 10 --publish http --publishers 1 --window 64 --api-url "http://127.0.0.1:$aport" --api-key bench-key

kill "$bc" 2>/dev/null || true
wait "$bc" 2>/dev/null || true
stop_gw

# The embedded engine: `herald` without HERALD_REDIS_URL, the same scenarios against its
# gateway (the publishes of scenario 6 through its broadcaster, in the same process).
hd=""
start_herald() {
    stop_herald
    HERALD_JWT_SECRET=$secret HERALD_API_KEY=bench-key HERALD_GATEWAY_LISTEN=127.0.0.1:$gport \
        HERALD_BROADCASTER_LISTEN=127.0.0.1:$aport HERALD_AUTH_LISTEN=127.0.0.1:$(free_port) \
        HERALD_MONITOR_LISTEN=127.0.0.1:$(free_port) \
        HERALD_MAX_CONNECTIONS_PER_IP=100000 HERALD_CONNECT_RATE_PER_IP=100000 \
        HERALD_RATE_LIMIT_MESSAGES=100000000 HERALD_LOG=warn \
        "${NS[@]}" taskset -c 0 "$bin/herald" >>"$out/herald.log" 2>&1 &
    hd=$!
    pids+=("$hd")
    for _ in $(seq 50); do "${NS[@]}" python3 -c "import socket; socket.create_connection(('127.0.0.1',$gport),0.2); socket.create_connection(('127.0.0.1',$aport),0.2)" 2>/dev/null && break; sleep 0.1; done
}
stop_herald() {
    if [[ -n $hd ]]; then kill "$hd" 2>/dev/null || true; wait "$hd" 2>/dev/null || true; hd=""; fi
}
start_herald
run "4. connection setup 15k (embedded)" connections "${target[@]}" --pid "$hd" --count 15000 --hold 1 --connect-concurrency 1000
start_herald
run "4. idle connections 19k (embedded)" connections "${target[@]}" --pid "$hd" --count 19000 --hold 10
start_herald
run "1. fan-out 10k subscribers, 5 pub/s (embedded)" fanout "${target[@]}" --pid "$hd" --subscribers 10000 --rate 5 --duration 10 --payload 100
run "1. fan-out 10k subscribers, 40 pub/s (embedded)" fanout "${target[@]}" --pid "$hd" --subscribers 10000 --rate 40 --duration 10 --payload 100
# No saturation run here: an embedded publish is acknowledged without a Redis round
# trip, so publishers with 64 in flight offer far more than one core can write and
# the subscribers are cut off as slow consumers (BENCHMARKS.md, both engines).
start_herald
run "2. latency 1k subscribers, 100 pub/s (embedded)" fanout "${target[@]}" --pid "$hd" --subscribers 1000 --rate 100 --duration 20 --payload 100
start_herald
run "2. latency 1 subscriber, 200 pub/s (embedded)" fanout "${target[@]}" --pid "$hd" --subscribers 1 --rate 200 --duration 10 --payload 100
start_herald
run "7. presence flood, 50 churners flat out (embedded)" "${presence[@]}" --pid "$hd"
start_herald
run "6. HTTP publish via broadcaster (embedded)" fanout "${target[@]}" --pid "$hd" --subscribers 1 --rate 0 --duration 10 --publish http --publishers 1 --window 64 --api-url "http://127.0.0.1:$aport" --api-key bench-key
stop_herald

python3 - "$out/results.jsonl" <<'EOF'
import json, sys
print(f"\n{'scenario':<52} {'deliv/s':>9} {'lost':>5} {'srv µs/del':>10} {'cli µs/del':>10} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
for line in open(sys.argv[1]):
    r = json.loads(line); name = r["scenario"]; d = r["result"]
    if "deliveries" in d:
        srv = d.get("gateway") or d.get("server") or {}
        cli = d.get("client") or {}
        lat = d.get("latency_ms") or {}
        print(f"{name:<52} {d['deliveries']['per_sec']:>9.0f} {d['deliveries']['lost']:>5} "
              f"{srv.get('cpu_us_per_delivery') or 0:>10.2f} {cli.get('cpu_us_per_delivery') or 0:>10.2f} "
              f"{lat.get('p50',0):>8.1f} {lat.get('p99',0):>8.1f} {lat.get('max',0):>8.1f}"
              + (f"   {d['publishes']['per_sec']:.0f} publishes/s" if 'publishes' in d else ""))
    elif "churn" in d:
        ch, ev, m = d["churn"], d["events"], d["messages"]
        g = d.get("gateway") or {}
        lat = d.get("latency_ms") or {}
        b, f = lat.get("baseline") or {}, lat.get("flood") or {}
        print(f"{name:<52} {ch['joins_per_sec']:>9.0f} joins/s, {ev['per_sec']:.0f} events/s "
              f"({ev['lost']} lost), gateway {g.get('cpu_pct_flood')} % CPU ({g.get('cpu_pct_baseline')} % before), "
              f"{g.get('extra_cpu_us_per_cycle')} µs/cycle over that; p50/p99 ms before "
              f"{b.get('p50')}/{b.get('p99')}, during {f.get('p50')}/{f.get('p99')}; messages lost {m['flood']['lost']}")
    else:
        g = d["gateway"]; c = d.get("client", {})
        print(f"{name:<52} {d['setup_per_sec']:>9.0f} conn/s, server {g.get('setup_cpu_us_per_connection')} µs/conn, "
              f"client {c.get('setup_cpu_us_per_connection')} µs/conn, {g.get('rss_kib_per_connection')} KiB/conn")
EOF
echo "results: $out/results.jsonl"
