# Herald's task runner: every build, test and run step lives here (CI calls these too).

set shell := ["bash", "-euo", "pipefail", "-c"]

# === config ===
compose := "docker compose -f docker/compose.yml"
dev_redis_port := env_var_or_default("HERALD_DEV_REDIS_PORT", "6379")
monitor_url := env_var_or_default("HERALD_MONITOR_URL", "http://127.0.0.1:8083")

# List the recipes.
default:
    @just --list

# Format the workspace.
fmt:
    cargo fmt --all

# Fail if anything is unformatted.
check-fmt:
    cargo fmt --all -- --check

# Lints, warnings as errors.
clippy:
    cargo clippy --workspace --all-targets -- -D warnings

# Formatting and lints.
lint: check-fmt clippy

# Build every binary (the end-to-end tests run them).
build:
    cargo build --workspace --bins

# Run every test: unit, property and end-to-end (needs redis-server on PATH).
test: build
    cargo nextest run --workspace

# Run one crate's tests.
test-crate crate: build
    cargo nextest run -p {{crate}}

# Run only the end-to-end scenarios.
e2e: build
    cargo nextest run -p e2e

# Start a local redis-server and the four services in development mode (Ctrl-C stops all).
dev: build
    #!/usr/bin/env bash
    set -euo pipefail
    export HERALD_DEV=1
    export HERALD_ADMIN_KEY="${HERALD_ADMIN_KEY:-dev-admin-key}"
    export HERALD_API_KEY="${HERALD_API_KEY:-dev-api-key}"
    export HERALD_REDIS_URL="redis://127.0.0.1:{{dev_redis_port}}"
    mkdir -p target/dev
    pids=()
    trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
    redis-server --port {{dev_redis_port}} --bind 127.0.0.1 --save "" --appendonly no > target/dev/redis.log 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p {{dev_redis_port}} ping >/dev/null 2>&1 && break; sleep 0.1; done
    for svc in auth-svc ws-gateway broadcaster monitor; do
        target/debug/$svc > target/dev/$svc.log 2>&1 &
        pids+=($!)
    done
    echo "Herald (dev) is up; logs in target/dev/"
    echo "  WebSocket   ws://127.0.0.1:8765/ws"
    echo "  auth-svc    http://127.0.0.1:8081   admin key: $HERALD_ADMIN_KEY"
    echo "  broadcaster http://127.0.0.1:8082   API key:   $HERALD_API_KEY"
    echo "  monitor     http://127.0.0.1:8083/api/v1/overview"
    wait

# Open the terminal dashboard.
tui:
    cargo run -p herald-tui -- --monitor {{monitor_url}}

# Bring the stack up in containers.
up:
    {{compose}} up -d --build

# Tear the container stack down.
down:
    {{compose}} down -v --remove-orphans
