# Herald's task runner: every build, test and run step lives here (CI calls these too).

set shell := ["bash", "-euo", "pipefail", "-c"]

# === config ===
# --- docker (issue 4) ---
compose_files := "-f docker/compose.yml"
offline_files := "-f docker/compose.yml -f docker/compose.offline.yml"
debian_mirror := env_var_or_default("HERALD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# A bash function: Compose v2 (`docker compose`) where it exists, else v1 (`docker-compose`).
docker_compose := 'docker_compose() { if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi; }'
# --- end docker ---
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

# === docker (issue 4): the stack in containers; docker/README.md explains ===

# Bring the whole stack up in containers (writes docker/.env with random secrets first if missing).
up:
    #!/usr/bin/env bash
    set -euo pipefail
    {{docker_compose}}
    if [[ ! -f docker/.env ]]; then
        secret() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n'; }
        sed -e "s|^HERALD_JWT_SECRET=.*|HERALD_JWT_SECRET=$(secret)|" \
            -e "s|^HERALD_ADMIN_KEY=.*|HERALD_ADMIN_KEY=$(secret)|" \
            -e "s|^HERALD_API_KEY=.*|HERALD_API_KEY=$(secret)|" \
            docker/.env.example > docker/.env
        chmod 600 docker/.env
        echo "wrote docker/.env with fresh random secrets (admin and API keys are in it)"
    fi
    docker_compose {{compose_files}} up -d --build
    echo "Herald is up: ws://127.0.0.1:8765/ws and ws://127.0.0.1:8766/ws, auth-svc :8081, broadcaster :8082, monitor :8083"

# The same stack from the images `just images-offline` made (no registry needed).
up-offline: images-offline
    #!/usr/bin/env bash
    set -euo pipefail
    {{docker_compose}}
    [[ -f docker/.env ]] || { echo "docker/.env is missing: copy docker/.env.example (or run \`just up\` once)" >&2; exit 1; }
    docker_compose {{offline_files}} up -d

# Tear the container stack down (and delete its Redis data volume).
down:
    #!/usr/bin/env bash
    set -euo pipefail
    {{docker_compose}}
    HERALD_ENV_FILE="${HERALD_ENV_FILE:-$PWD/docker/.env.example}" \
        docker_compose {{compose_files}} --profile prometheus --profile tui down -v --remove-orphans

# Build every image the stack needs without a registry: debian:bookworm-slim (debootstrap), redis:7 and prom/prometheus (Debian packages), herald (host-built release binaries).
images-offline:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v docker >/dev/null || { echo "images-offline: docker is not installed" >&2; exit 1; }
    docker info >/dev/null || { echo "images-offline: the Docker engine is not reachable" >&2; exit 1; }
    started=$(date +%s)
    have() { [[ -z "${HERALD_OFFLINE_REBUILD:-}" ]] && docker image inspect "$1" >/dev/null 2>&1; }
    cargo build --release --bins
    if ! have debian:bookworm-slim; then
        command -v debootstrap >/dev/null || { echo "images-offline: needs debootstrap (apt-get install debootstrap) and root" >&2; exit 1; }
        rootfs=target/offline/rootfs
        rm -rf "$rootfs" && mkdir -p "$rootfs"
        debootstrap --variant=minbase bookworm "$rootfs" {{debian_mirror}} > target/offline/debootstrap.log
        # Trimmed like the official slim image: no docs, manuals or translations, no apt caches.
        printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
            'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' \
            'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' \
            > "$rootfs/etc/dpkg/dpkg.cfg.d/docker"
        printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
            {{debian_mirror}} {{debian_mirror}} > "$rootfs/etc/apt/sources.list"
        find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
        rm -rf "$rootfs"/usr/share/{man,info,locale}/* "$rootfs"/var/cache/apt/archives/*.deb \
            "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
        tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - debian:bookworm-slim
        rm -rf "$rootfs"
    fi
    have redis:7 || docker build -q -f docker/offline/Dockerfile.redis -t redis:7 docker/offline
    have prom/prometheus:v2.53.0 || docker build -q -f docker/offline/Dockerfile.prometheus -t prom/prometheus:v2.53.0 docker/offline
    image="${HERALD_IMAGE:-herald:latest}"
    old=$(docker image inspect -f '{{{{.Id}}' "$image" 2>/dev/null || true)
    docker build -q -f docker/Dockerfile.prebuilt -t "$image" .
    # The image this replaced (new binaries) would pile up untagged, run after run.
    if [[ -n "$old" && "$old" != "$(docker image inspect -f '{{{{.Id}}' "$image")" ]]; then
        docker rmi "$old" >/dev/null 2>&1 || true
    fi
    echo "images-offline: done in $(( $(date +%s) - started ))s"

# The compose stack end to end (needs Docker): offline images, then the ignored `compose` scenario; tears down even on failure.
compose-e2e: images-offline
    #!/usr/bin/env bash
    set -euo pipefail
    {{docker_compose}}
    export HERALD_COMPOSE_PROJECT="herald-e2e-$(date +%s)-$$"
    cleanup() {
        HERALD_ENV_FILE="$PWD/docker/.env.example" docker_compose -p "$HERALD_COMPOSE_PROJECT" \
            {{offline_files}} --profile prometheus --profile tui down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    }
    trap cleanup EXIT
    started=$(date +%s)
    cargo nextest run -p e2e --run-ignored only --no-capture compose
    echo "compose-e2e: the scenario took $(( $(date +%s) - started ))s"

# === end docker ===

# Reproduce BENCHMARKS.md: release build, gateway and load generator pinned to one
# core each, loopback (in a fresh network namespace when root); about 6 minutes.
bench:
    bash crates/herald-bench/scenarios.sh

# === fuzzing and soak (issue 5); docs/security.md and docs/reliability.md explain ===

# Fuzz each target (all when none is named: client_frame token claims http_body) with cargo-fuzz for HERALD_FUZZ_SECS seconds each (default 60); not in CI.
fuzz *targets:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    # libFuzzer instrumentation needs nightly-only rustc flags; the stable toolchain allows
    # them with RUSTC_BOOTSTRAP=1 (the fuzz crate is its own workspace, so nothing else sees it).
    export RUSTC_BOOTSTRAP=1
    secs="${HERALD_FUZZ_SECS:-60}"
    # Pin the fuzz build to the workspace's dependency versions.
    [[ -f fuzz/Cargo.lock ]] || cp Cargo.lock fuzz/Cargo.lock
    targets=({{targets}})
    ((${#targets[@]})) || targets=(client_frame token claims http_body)
    cd fuzz
    for t in "${targets[@]}"; do
        # New inputs go to target/corpus (scratch); the kept seeds in corpus/ stay small.
        mkdir -p "target/corpus/$t" "target/artifacts/$t"
        echo "fuzz: $t for ${secs}s"
        if ! cargo fuzz run "$t" "target/corpus/$t" "corpus/$t" -- \
            -max_total_time="$secs" -dict=herald.dict -artifact_prefix="target/artifacts/$t/" -print_final_stats=1; then
            echo "fuzz: $t failed an invariant; the input is in fuzz/target/artifacts/$t/:" >&2
            echo "  copy it to fuzz/regressions/$t/ (replayed by \`cargo test -p herald-fuzz\`), add a named test, fix" >&2
            exit 1
        fi
    done

# The same targets with herald-fuzz's coverage-free mutation fuzzer (stable toolchain, no cargo-fuzz); HERALD_FUZZ_SECS each.
fuzz-stable *targets:
    cargo run -q -p herald-fuzz -- --secs "${HERALD_FUZZ_SECS:-60}" {{targets}}

# Soak (not in CI): HERALD_SOAK_SECS (default 600) of mixed load, churn and Redis restarts every HERALD_SOAK_REDIS_RESTART_SECS (default 60); prints a report and fails on any loss.
soak: build
    #!/usr/bin/env bash
    set -euo pipefail
    # The suite's nextest profiles kill tests after 2 minutes; the soak gets a profile
    # without that limit (it bounds itself).
    mkdir -p target/soak
    printf '[profile.soak]\nslow-timeout = { period = "120s" }\n' > target/soak/nextest.toml
    cargo nextest run -p e2e --tool-config-file "herald-soak:$PWD/target/soak/nextest.toml" -P soak \
        --run-ignored only --no-capture -E 'test(=tests::chaos::soak)'
