# Herald's task runner: every build, test and run step lives here (CI calls these too).

set shell := ["bash", "-euo", "pipefail", "-c"]

# === config ===
# Containers (docker/README.md): the compose files, and the Debian mirror that
# `images-offline` bootstraps its base image from.
compose_files := "-f docker/compose.yml"
offline_files := "-f docker/compose.yml -f docker/compose.offline.yml"
# The stack on a six-node Redis Cluster (`up-cluster`, `up-cluster-offline`).
cluster_files := "-f docker/compose.yml -f docker/compose.cluster.yml"
offline_cluster_files := "-f docker/compose.yml -f docker/compose.offline.yml -f docker/compose.cluster.yml"
debian_mirror := env_var_or_default("HERALD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
# The names of the images `images-offline` makes: names of their own, so that they never
# shadow the official images on a machine that later reaches a registry.
offline_debian := "herald-offline/debian:bookworm-slim"
offline_redis := "herald-offline/redis:7"
offline_prometheus := "herald-offline/prometheus:v2.53.0"
# A bash function: Compose v2 (`docker compose`) where it exists, else v1 (`docker-compose`).
docker_compose := 'docker_compose() { if docker compose version >/dev/null 2>&1; then docker compose "$@"; else docker-compose "$@"; fi; }'
# `just dev`: the ports (on 127.0.0.1) of its Redis and of each service.
dev_redis_port := env_var_or_default("HERALD_DEV_REDIS_PORT", "6379")
dev_auth_port := env_var_or_default("HERALD_DEV_AUTH_PORT", "8081")
dev_gateway_port := env_var_or_default("HERALD_DEV_GATEWAY_PORT", "8765")
dev_broadcaster_port := env_var_or_default("HERALD_DEV_BROADCASTER_PORT", "8082")
dev_monitor_port := env_var_or_default("HERALD_DEV_MONITOR_PORT", "8083")
monitor_url := env_var_or_default("HERALD_MONITOR_URL", "http://127.0.0.1:" + dev_monitor_port)

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

# Build every binary.
build:
    cargo build --workspace --bins

# Run every test: unit, property and end-to-end (checks first for the tools they need; the end-to-end harness builds the binaries it runs).
test: _test-tools
    cargo nextest run --workspace

# Run one crate's tests.
test-crate crate: _test-tools
    cargo nextest run -p {{crate}}

# Run only the end-to-end scenarios.
e2e: _test-tools
    cargo nextest run -p e2e

# What the tests need besides Rust and `just`: one line per missing tool saying how to
# install it, then a non-zero exit. `.ci/run` installs all of them on Debian/Ubuntu.
_test-tools:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=0
    need() { echo "missing: $1 — $2" >&2; missing=1; }
    cargo nextest --version >/dev/null 2>&1 \
        || need cargo-nextest "install it with \`cargo install cargo-nextest --locked\` (the test runner)"
    command -v redis-server >/dev/null \
        || need redis-server "install it with \`sudo apt-get install redis-server\` (every Redis-backed test starts its own)"
    command -v redis-cli >/dev/null \
        || need redis-cli "install it with \`sudo apt-get install redis-server\` (the Redis Cluster tests form their cluster with it)"
    command -v promtool >/dev/null \
        || need promtool "install it with \`sudo apt-get install prometheus\` (checks the services' /metrics)"
    command -v tmux >/dev/null \
        || need tmux "install it with \`sudo apt-get install tmux\` (the dashboard's end-to-end test drives it)"
    command -v node >/dev/null \
        || need node "install it with \`sudo apt-get install nodejs\` (runs herald.js's unit tests)"
    command -v tsc >/dev/null \
        || need tsc "install it with \`sudo apt-get install node-typescript\` (checks herald.d.ts)"
    command -v chromium >/dev/null || command -v chromium-browser >/dev/null || [[ -n "${HERALD_CHROMIUM:-}" ]] \
        || need chromium "install it with \`sudo apt-get install chromium\` (the browser tests drive it headless)"
    if ((missing)); then
        echo "the tests need the tools above; install them and run this again" >&2
        exit 1
    fi

# Start a local redis-server and the four services in development mode, wait until each is ready (Ctrl-C stops all).
dev: build
    #!/usr/bin/env bash
    set -euo pipefail
    # Ports (all on 127.0.0.1): HERALD_DEV_REDIS_PORT (6379), HERALD_DEV_AUTH_PORT (8081),
    # HERALD_DEV_GATEWAY_PORT (8765), HERALD_DEV_BROADCASTER_PORT (8082),
    # HERALD_DEV_MONITOR_PORT (8083). Logs in HERALD_DEV_LOG_DIR (target/dev), the previous
    # run's kept as *.log.1. Each service gets HERALD_DEV_TIMEOUT_SECS (30) to answer /readyz.
    export HERALD_DEV=1
    export HERALD_ADMIN_KEY="${HERALD_ADMIN_KEY:-dev-admin-key}"
    export HERALD_API_KEY="${HERALD_API_KEY:-dev-api-key}"
    export HERALD_REDIS_URL="redis://127.0.0.1:{{dev_redis_port}}"
    bin="${CARGO_TARGET_DIR:-target}/debug"
    logs="${HERALD_DEV_LOG_DIR:-target/dev}"
    patience="${HERALD_DEV_TIMEOUT_SECS:-30}"
    redis_port={{dev_redis_port}}
    services=(auth-svc ws-gateway broadcaster monitor)
    declare -A port=([auth-svc]={{dev_auth_port}} [ws-gateway]={{dev_gateway_port}} \
        [broadcaster]={{dev_broadcaster_port}} [monitor]={{dev_monitor_port}})
    declare -A knob=([auth-svc]=HERALD_DEV_AUTH_PORT [ws-gateway]=HERALD_DEV_GATEWAY_PORT \
        [broadcaster]=HERALD_DEV_BROADCASTER_PORT [monitor]=HERALD_DEV_MONITOR_PORT)
    fail() { echo "dev: $*" >&2; exit 1; }
    for tool in redis-server redis-cli; do
        command -v "$tool" >/dev/null || fail "$tool is not installed (\`sudo apt-get install redis-server\`)"
    done
    # Something answers on 127.0.0.1:<port> (a listener on 0.0.0.0 or 127.0.0.1 would make our bind fail).
    taken() { timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null; }
    # The status line of `GET <path>` on 127.0.0.1:<port> is 200.
    answers() {
        timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" || exit 1
            printf "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" "$1" >&3
            read -r _ code _ <&3 && [[ $code == 200 ]]' "$1" "$2" 2>/dev/null
    }
    # Every port must be free before anything starts: a service that cannot bind would die
    # (its reason only in its log), and a Redis already on the port would be used instead
    # of ours, mixing its data into the run.
    problems=()
    if taken "$redis_port"; then
        problems+=("port $redis_port (Redis) is already in use, perhaps by a system redis-server; dev runs a Redis of its own: pick another port, e.g. HERALD_DEV_REDIS_PORT=$((redis_port + 1)) just dev")
    fi
    for svc in "${services[@]}"; do
        p=${port[$svc]}
        if taken "$p"; then
            problems+=("port $p ($svc) is already in use (another \`just dev\`?): stop what holds it, or pick another port with ${knob[$svc]}=<port>")
        fi
    done
    if ((${#problems[@]})); then
        printf 'dev: %s\n' "${problems[@]}" >&2
        exit 1
    fi

    mkdir -p "$logs"
    # Keep the previous run's logs: <name>.log becomes <name>.log.1.
    for f in "$logs"/*.log; do [[ -e $f ]] && mv -f "$f" "$f.1"; done
    pids=()
    names=()
    stop() { ((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null || true; }
    trap stop EXIT
    # Ctrl-C is how a dev run ends: stop everything and exit 0. SIGTERM means someone else
    # stopped it.
    trap 'echo "dev: stopping" >&2; exit 0' INT
    trap 'exit 143' TERM
    # Tells why <name> did not come up (or went away), with the end of its log, and exits;
    # the EXIT trap stops the rest.
    died() {
        echo "dev: $1; the end of $logs/$2.log:" >&2
        tail -n 20 "$logs/$2.log" | sed 's/^/    /' >&2
        exit 1
    }
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no > "$logs/redis.log" 2>&1 &
    pids+=($!)
    names+=(redis)
    deadline=$((SECONDS + patience))
    # Ready once the Redis answering on the port is this one (its process id says so).
    until [[ $(redis-cli -p "$redis_port" info server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p') == "${pids[0]}" ]]; do
        kill -0 "${pids[0]}" 2>/dev/null || died "redis-server on port $redis_port exited at start" redis
        ((SECONDS < deadline)) || died "redis-server on port $redis_port did not answer within ${patience}s" redis
        sleep 0.1
    done
    for svc in "${services[@]}"; do
        HERALD_LISTEN="127.0.0.1:${port[$svc]}" "$bin/$svc" > "$logs/$svc.log" 2>&1 &
        pids+=($!)
        names+=("$svc")
    done
    deadline=$((SECONDS + patience))
    for i in "${!names[@]}"; do
        svc=${names[$i]}
        [[ $svc == redis ]] && continue
        until answers "${port[$svc]}" /readyz; do
            if ! kill -0 "${pids[$i]}" 2>/dev/null; then
                status=0
                wait "${pids[$i]}" || status=$?
                died "$svc exited (status $status) before it was ready" "$svc"
            fi
            ((SECONDS < deadline)) || died "$svc is not ready after ${patience}s (GET /readyz on port ${port[$svc]} does not answer 200)" "$svc"
            sleep 0.2
        done
    done
    # Two users for the chat demo (the dev Redis starts empty every run).
    for user in ann bob; do
        "$bin/auth-svc" user add "$user" --password "$user-password" --channels 'chat:*' --publish 'chat:*' \
            >> "$logs/auth-svc.log" 2>&1 || died "could not create the demo user $user" auth-svc
    done
    demo="http://127.0.0.1:${port[ws-gateway]}/demo/"
    [[ ${port[auth-svc]} == 8081 ]] || demo+="?auth=http://127.0.0.1:${port[auth-svc]}"
    echo "Herald (dev) is up; logs in $logs/ (Ctrl-C stops it)"
    echo "  Redis       redis://127.0.0.1:$redis_port"
    echo "  WebSocket   ws://127.0.0.1:${port[ws-gateway]}/ws"
    echo "  auth-svc    http://127.0.0.1:${port[auth-svc]}   admin key: $HERALD_ADMIN_KEY"
    echo "  broadcaster http://127.0.0.1:${port[broadcaster]}   API key:   $HERALD_API_KEY"
    echo "  monitor     http://127.0.0.1:${port[monitor]}/api/v1/overview"
    echo "  chat demo   $demo   (log in as ann / ann-password or bob / bob-password)"
    echo "  herald.js   http://127.0.0.1:${port[ws-gateway]}/herald.js"
    # Run until a process ends by itself (or Ctrl-C): then say which, and stop the rest.
    while :; do
        wait -n "${pids[@]}" || true
        for i in "${!names[@]}"; do
            kill -0 "${pids[$i]}" 2>/dev/null || died "${names[$i]} stopped" "${names[$i]}"
        done
    done

# It runs the binary `just build` made, so the dashboard shares that one build with `just dev`.
[doc("Open the terminal dashboard on `just dev`'s monitor (HERALD_MONITOR_URL for another); arguments go to herald-tui.")]
tui *args: build
    "${CARGO_TARGET_DIR:-target}/debug/herald-tui" --monitor {{monitor_url}} {{args}}

# === docker: the stack in containers; docker/README.md explains ===

# Bring the whole stack up in containers (writes docker/.env with random secrets first if missing); without a registry use `just up-offline`.
up: _env-file (_up compose_files "up-offline") && _stack-summary

# The same stack on a six-node Redis Cluster (docker/compose.cluster.yml) instead of one Redis; without a registry use `just up-cluster-offline`.
up-cluster: _env-file (_up cluster_files "up-cluster-offline") && (_stack-summary cluster_files)

# `docker compose <files> up -d --build`; if that fails, says why (no registry: `just <offline>`) and removes what this attempt created.
_up files offline:
    #!/usr/bin/env bash
    set -euo pipefail
    {{docker_compose}}
    project="${COMPOSE_PROJECT_NAME:-$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' docker/.env | tail -n1)}"
    label="label=com.docker.compose.project=${project:-docker}"
    # What the project already had: a failed attempt removes only what it created itself.
    before=$(docker ps -aq --filter "$label"; docker network ls -q --filter "$label"; docker volume ls -q --filter "$label")
    out=$(mktemp)
    trap 'rm -f "$out"' EXIT
    if docker_compose {{files}} up -d --build 2>&1 | tee "$out"; then
        exit 0
    fi
    echo >&2
    if grep -qiE 'pull access denied|no such host|lookup [^ ]+ on|dial tcp|i/o timeout|name resolution|failed to resolve|failed to do request|TLS handshake timeout|registry-1\.docker\.io|manifest unknown' "$out"; then
        echo "up: Docker could not pull the images it needs: no image registry is reachable from this engine." >&2
        echo "up: \`just {{offline}}\` builds every image locally instead (docker/README.md, \"Offline\")." >&2
    else
        echo "up: \`docker compose up\` failed; its output is above." >&2
    fi
    if [[ -z $before ]]; then
        docker_compose {{files}} down -v --remove-orphans >/dev/null 2>&1 || true
        echo "up: removed the containers, network and volumes this attempt created." >&2
    fi
    exit 1

# The same stack from images built here, no registry needed: docker/.env first, then `just images-offline`, then the stack.
up-offline: _env-file images-offline && _stack-summary
    #!/usr/bin/env bash
    set -euo pipefail
    {{docker_compose}}
    docker_compose {{offline_files}} up -d

# `just up-cluster` without a registry: docker/.env, `just images-offline`, then the stack with its six Redis nodes on herald-offline/redis:7.
up-cluster-offline: _env-file images-offline && (_stack-summary offline_cluster_files)
    #!/usr/bin/env bash
    set -euo pipefail
    {{docker_compose}}
    # compose.offline.yml swaps the image of `redis` only; the nodes take this one.
    export HERALD_REDIS_IMAGE="${HERALD_REDIS_IMAGE:-{{offline_redis}}}"
    docker_compose {{offline_cluster_files}} up -d

# docker/.env, with fresh random secrets, unless it exists: the `up…` recipes share it.
_env-file:
    #!/usr/bin/env bash
    set -euo pipefail
    [[ -f docker/.env ]] && exit 0
    secret() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n'; }
    (
        umask 077
        sed -e "s|^HERALD_JWT_SECRET=.*|HERALD_JWT_SECRET=$(secret)|" \
            -e "s|^HERALD_ADMIN_KEY=.*|HERALD_ADMIN_KEY=$(secret)|" \
            -e "s|^HERALD_API_KEY=.*|HERALD_API_KEY=$(secret)|" \
            docker/.env.example > docker/.env
    )
    echo "wrote docker/.env with fresh random secrets (admin and API keys are in it)"

# Waits for every container's healthcheck, then says what runs where, as compose published it: `up`, `up-offline` and the `up-cluster` pair end with it.
_stack-summary files=compose_files:
    #!/usr/bin/env bash
    set -euo pipefail
    {{docker_compose}}
    patience="${HERALD_UP_TIMEOUT_SECS:-120}"
    deadline=$((SECONDS + patience))
    # What to tell for logs: the base file, or with the cluster's (its nodes are services there).
    files="{{compose_files}}"
    [[ "{{files}}" == *compose.cluster.yml* ]] && files="{{cluster_files}}"
    while :; do
        pending=()
        for id in $(docker_compose {{files}} ps -q); do
            state=$(docker inspect -f '{{{{.Name}}: {{{{.State.Status}}{{{{if .State.Health}}/{{{{.State.Health.Status}}{{{{end}}' "$id")
            case $state in
                *": running/healthy" | *": running") ;;
                *": exited"* | *": dead"*) pending+=("$state (stopped)") ;;
                *) pending+=("$state") ;;
            esac
        done
        ((${#pending[@]})) || break
        if printf '%s\n' "${pending[@]}" | grep -q '(stopped)' || ((SECONDS >= deadline)); then
            echo "up: not healthy after $((patience - deadline + SECONDS))s: ${pending[*]#/}" >&2
            echo "up: its logs: docker compose $files logs <service> (docker-compose with Compose v1)" >&2
            exit 1
        fi
        sleep 1
    done
    at() { docker_compose {{files}} port "$1" "$2" 2>/dev/null | head -n1; }
    echo "Herald is up in containers (secrets, admin and API keys in docker/.env):"
    echo "  WebSocket   ws://$(at ws-gateway-1 8765)/ws   ws://$(at ws-gateway-2 8765)/ws"
    echo "  auth-svc    http://$(at auth-svc 8081)"
    echo "  broadcaster http://$(at broadcaster 8082)"
    echo "  monitor     http://$(at monitor 8083)/api/v1/overview"
    if [[ $files == *compose.cluster.yml* ]]; then
        roles=$(docker_compose {{files}} exec -T redis-node-1 redis-cli cluster nodes 2>/dev/null \
            | awk '{ if ($3 ~ /master/) p++; else r++ } END { printf "%d primaries, %d replicas", p, r }') || true
        echo "  Redis Cluster redis-node-1 … redis-node-6 (${roles:-state unknown}), only inside the stack's network"
    else
        echo "  Redis only inside the stack's network"
    fi
    echo "  logs: docker compose $files logs -f (docker-compose with Compose v1); stop and delete the data: just down"

# Tear the container stack down, one Redis or a cluster (and delete its Redis data volumes).
down:
    #!/usr/bin/env bash
    set -euo pipefail
    {{docker_compose}}
    # With the cluster's file when the project has any of its nodes or their volumes, so
    # that `down -v` deletes those volumes too (without it, it lists only the base file's).
    project="${COMPOSE_PROJECT_NAME:-$(sed -n 's/^COMPOSE_PROJECT_NAME=//p' docker/.env 2>/dev/null | tail -n1 || true)}"
    label="label=com.docker.compose.project=${project:-docker}"
    files="{{compose_files}}"
    if { docker ps -a --filter "$label" --format '{{{{.Label "com.docker.compose.service"}}'
         docker volume ls --filter "$label" --format '{{{{.Label "com.docker.compose.volume"}}'; } | grep '^redis-node-' >/dev/null; then
        files="{{cluster_files}}"
    fi
    HERALD_ENV_FILE="${HERALD_ENV_FILE:-$PWD/docker/.env.example}" \
        docker_compose $files --profile prometheus --profile tui down -v --remove-orphans

# Build every image the stack needs without a registry, under names of its own: herald-offline/debian (debootstrap), herald-offline/redis and herald-offline/prometheus (Debian packages), herald (host-built release binaries).
images-offline:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v docker >/dev/null || { echo "images-offline: docker is not installed" >&2; exit 1; }
    docker info >/dev/null || { echo "images-offline: the Docker engine is not reachable" >&2; exit 1; }
    started=$(date +%s)
    have() { [[ -z "${HERALD_OFFLINE_REBUILD:-}" ]] && docker image inspect "$1" >/dev/null 2>&1; }
    id() { docker image inspect -f '{{{{.Id}}' "$1" 2>/dev/null || true; }
    # The image a new build took the tag from is left behind: remove it only if nothing
    # names it any more (no other tag; one in use by a container stays too).
    drop_replaced() {
        local old=$1 tag=$2
        [[ -n $old && $old != "$(id "$tag")" ]] || return 0
        [[ -z $(docker image inspect -f '{{{{join .RepoTags ","}}' "$old" 2>/dev/null) ]] || return 0
        docker rmi "$old" >/dev/null 2>&1 || true
    }
    # docker build … -t <tag>, then drop the image it replaced.
    build() {
        local tag=$1 old
        shift
        old=$(id "$tag")
        docker build -q -t "$tag" "$@" >/dev/null
        drop_replaced "$old" "$tag"
        echo "images-offline: built $tag"
    }
    cargo build --release --bins
    mkdir -p target/offline
    if ! have {{offline_debian}}; then
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
        old=$(id {{offline_debian}})
        tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - {{offline_debian}} >/dev/null
        drop_replaced "$old" {{offline_debian}}
        rm -rf "$rootfs"
        echo "images-offline: built {{offline_debian}}"
    fi
    have {{offline_redis}} || build {{offline_redis}} --build-arg BASE={{offline_debian}} \
        -f docker/offline/Dockerfile.redis docker/offline
    have {{offline_prometheus}} || build {{offline_prometheus}} --build-arg BASE={{offline_debian}} \
        -f docker/offline/Dockerfile.prometheus docker/offline
    # Herald: the release binaries stripped (their debug info kept apart, in
    # target/offline/herald/symbols), with only the shared libraries they need, on an empty base.
    rm -rf target/offline/herald
    bash docker/rootfs.sh target/offline/herald/rootfs target/offline/herald/symbols \
        target/release/{auth-svc,ws-gateway,broadcaster,monitor,herald-tui}
    image="${HERALD_IMAGE:-herald:latest}"
    build "$image" -f docker/Dockerfile.prebuilt .
    size=$(docker image inspect -f '{{{{.Size}}' "$image")
    echo "images-offline: $image is $((size / 1000000)) MB; done in $(( $(date +%s) - started ))s"

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

# Reproduce BENCHMARKS.md: release build, gateway and load generator pinned to one core each, loopback (in a fresh network namespace when root); about 9 minutes.
bench:
    bash crates/herald-bench/scenarios.sh

# One Redis against a three-primary Redis Cluster on this machine: publishes/s and Redis CPU per publish over 10,000 channels, each primary's share, gateway CPU per delivery (BENCHMARKS.md, "Redis Cluster"); about 3 minutes.
bench-cluster:
    bash crates/herald-bench/cluster.sh

# === fuzzing and soak; docs/security.md and docs/reliability.md explain ===

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
        --run-ignored only --no-capture -E 'test(=tests::soak::soak)'
