#!/usr/bin/env bash
# One Redis against a Redis Cluster of three primaries (each with a replica), on this
# machine (`just bench-cluster`): release build, loopback only; the broadcaster or the
# gateway pinned to core 0, Redis and the load generator to core 1. Results go to
# target/bench/cluster.jsonl (one JSON object per run) and a summary table is printed.
#
#   publish, 10,000 channels: publishes/s through the broadcaster, Redis CPU per publish
#     (summed over the primaries), each primary's share of the publishes; with 64
#     publishes in flight (they share round trips on the broadcaster's connection to
#     each node) and with 1 (every publish its own round trip).
#   fan-out, 1,000 subscribers on 100 channels: gateway CPU per delivery.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p ws-gateway -p herald-bench -p broadcaster
bin=$PWD/target/release
out=$PWD/target/bench
mkdir -p "$out"
: >"$out/cluster.jsonl"
secret=bench-secret-0123456789abcdef
key=bench-api-key-0123456789abcdef
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A port P below the ephemeral range with P and P+10000 (a cluster node's bus) free.
cluster_port() {
    python3 -c '
import random, socket
while True:
    p = random.randrange(20000, 22000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass'
}
wait_port() { for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1',$1),0.2)" 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# redis PORT [ARGS…]: a redis-server on core 1, no persistence.
redis() {
    local port=$1
    shift
    mkdir -p "$work/$port"
    taskset -c 1 redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$work/$port" "$@" >"$work/$port/log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "bench-cluster: redis-server on $port did not start" >&2
    exit 1
}

svc=""
# service NAME ENV…: a fresh Herald service on core 0 (the previous one stopped).
service() {
    stop_service
    local name=$1 port
    shift
    port=$(free_port)
    env "$@" HERALD_LISTEN="127.0.0.1:$port" HERALD_JWT_SECRET=$secret HERALD_API_KEY=$key \
        HERALD_MAX_CONNECTIONS_PER_IP=100000 HERALD_CONNECT_RATE_PER_IP=100000 \
        HERALD_RATE_LIMIT_MESSAGES=100000000 HERALD_LOG=warn \
        taskset -c 0 "$bin/$name" >>"$out/cluster-$name.log" 2>&1 &
    svc=$!
    svc_port=$port
    pids+=("$svc")
    wait_port "$port"
}
stop_service() {
    if [[ -n $svc ]]; then kill "$svc" 2>/dev/null || true; wait "$svc" 2>/dev/null || true; svc=""; fi
}

results="$out/cluster.jsonl"
errs=cluster-run
# shellcheck source=run.sh
source crates/herald-bench/run.sh

# measure MODE REDIS_ENV PRIMARIES: the publish and fan-out runs against one setup.
measure() {
    local mode=$1 redis_env=$2 primaries=$3
    service broadcaster "$redis_env"
    for c in 64 1; do
        run "$mode: publish 10k channels, $c in flight" publish --api-url "http://127.0.0.1:$svc_port" \
            --api-key "$key" --channels 10000 --concurrency "$c" --duration 10 --redis "$primaries" --pid "$svc"
    done
    service ws-gateway "$redis_env"
    run "$mode: fan-out 1k subscribers on 100 channels, 20k pub/s" fanout \
        --url "ws://127.0.0.1:$svc_port/ws" --secret "$secret" --pid "$svc" \
        --subscribers 1000 --channels 100 --rate 20000 --duration 10 --payload 100
    stop_service
}

# One Redis.
single=$(cluster_port)
redis "$single"
measure single "HERALD_REDIS_URL=redis://127.0.0.1:$single" "redis://127.0.0.1:$single"
redis-cli -p "$single" shutdown nosave >/dev/null 2>&1 || true

# Three primaries, three replicas.
nodes=()
for _ in 1 2 3 4 5 6; do
    p=$(cluster_port)
    redis "$p" --cluster-enabled yes --cluster-config-file "nodes-$p.conf" --cluster-node-timeout 5000
    nodes+=("127.0.0.1:$p")
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$work/create.log"
for _ in $(seq 100); do
    redis-cli -p "${nodes[0]#*:}" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
done
sleep 1
primaries=$(redis-cli -p "${nodes[0]#*:}" cluster nodes | awk '$3 ~ /master/ { split($2, a, "@"); print "redis://" a[1] }' | paste -sd, -)
seeds=$(printf 'redis://%s,' "${nodes[@]}")
measure cluster "HERALD_REDIS_CLUSTER=${seeds%,}" "$primaries"

python3 - "$out/cluster.jsonl" <<'PY'
import json, sys
print(f"\n{'scenario':58} {'pub/s':>8} {'redis µs/pub':>13} {'max dev %':>10} {'bc µs/pub':>10} {'gw µs/deliv':>12}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    res = r["result"]
    pubs = res.get("publishes", {}).get("per_sec")
    redis = res.get("redis", {})
    gw = res.get("gateway", {}).get("cpu_us_per_delivery")
    bc = res.get("broadcaster", {}).get("cpu_us_per_publish")
    f = lambda v: "-" if v is None else str(v)
    print(f"{r['scenario']:58} {f(pubs):>8} {f(redis.get('cpu_us_per_publish')):>13} {f(redis.get('max_deviation_from_even_pct')):>10} {f(bc):>10} {f(gw):>12}")
PY
