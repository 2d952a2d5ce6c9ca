#!/usr/bin/env bash
# End-to-end test on containers: builds the image, follows the README's "Deploying a park node"
# steps verbatim for two parks, then brings up the six-park federation of deploy/compose.yaml,
# writes through three parks, partitions one container off with `docker network disconnect`,
# writes on both sides, reconnects, kills a container with `docker kill` in the middle of a
# stream of writes and starts it again; after each step every park must hold every write and
# the same digest. Everything it creates is removed at the end, on failure too. Every wait is
# bounded. Skips (exit 0, with a message) when no Docker engine answers.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

if ! docker info >/dev/null 2>&1; then
    echo "e2e: SKIPPED: no Docker engine answers here"
    exit 0
fi
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
else
    echo "e2e: SKIPPED: neither 'docker compose' nor 'docker-compose' is installed"
    exit 0
fi

project=kervan-e2e
work=$(mktemp -d)
parks=(kz-astana-hub uz-it-park kg-htp az-sabah-lab tr-bilisim-vadisi tr-bilkent-cyberpark)
readme_parks=(kz-abai-it-valley kz-jaiq-hub)
passed=0

cleanup() {
    set +e
    "${compose[@]}" -p "$project" -f deploy/compose.yaml down --timeout 5 >/dev/null 2>&1
    for p in "${readme_parks[@]}"; do docker rm -f "kervan-$p" >/dev/null 2>&1; done
    for p in "${parks[@]}" "${readme_parks[@]}"; do docker volume rm -f "kervan-$p" >/dev/null 2>&1; done
    docker network rm kervan >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT
cleanup
work=$(mktemp -d)

fail() {
    echo "e2e: FAILED: $*" >&2
    exit 1
}

pass() {
    passed=$((passed + 1))
    echo "e2e: ok: $*"
}

# Polls a command until it succeeds, at most $1 seconds.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${seconds}s waiting for $what"
        sleep 0.5
    done
}

kervan() { # container, args...
    local c=$1
    shift
    docker exec "$c" /kervan "$@"
}

digest() {
    kervan "$1" status --json | grep -o '"digest": *"[0-9a-f]*"' | grep -o '[0-9a-f]\{64\}'
}

same_digest() { # containers...
    local first d
    first=$(digest "$1") || return 1
    for c in "$@"; do
        d=$(digest "$c") || return 1
        [ "$d" = "$first" ] || return 1
    done
}

has_startup() { # container, id
    kervan "$1" startups show "$2" --json >/dev/null 2>&1
}

add_startup() { # container, country -> prints the new id
    local c=$1 country=$2
    kervan "$c" startups add --json --data "{\"name\": \"E2E $RANDOM\", \"country\": \"$country\", \"sectors\": [\"ai\"], \"stage\": \"seed\"}" |
        grep -o '"id": *"[^"]*"' | head -1 | sed 's/.*"\([^"]*\)"$/\1/'
}

echo "e2e: building the image"
deploy/build-image.sh kervan:latest

# ---- the systemd unit and the example config ----
if command -v systemd-analyze >/dev/null 2>&1; then
    unit="$work/kervan.service"
    sed "s|/usr/local/bin/kervan|$root/deploy/image/rootfs/kervan|g" deploy/kervan.service >"$unit"
    out=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze: $out"
    [ -z "$out" ] || fail "systemd-analyze: $out"
    pass "the systemd unit verifies"
fi
deploy/image/rootfs/kervan validate --config deploy/config.example.toml >/dev/null
pass "the example config validates"

# ---- the README's steps, verbatim, for two parks ----
readme_block() { # marker
    awk -v m="<!-- deploy:$1 -->" -v e="<!-- /deploy:$1 -->" \
        '$0 == m {f = 1; next} $0 == e {f = 0} f && !/^```/' "$root/README.md"
}
for step in park-init convener park-join; do
    [ -n "$(readme_block "$step")" ] || fail "README has no deploy:$step block"
done
declare -A names=([kz-abai-it-valley]="Abai IT Valley" [kz-jaiq-hub]="Jaiq Hub")
declare -A cities=([kz-abai-it-valley]="Semey" [kz-jaiq-hub]="Uralsk")
mkdir -p "$work/convener"
for p in "${readme_parks[@]}"; do
    mkdir -p "$work/$p"
    (cd "$work/$p" && PARK=$p NAME=${names[$p]} COUNTRY=KZ CITY=${cities[$p]} bash -euo pipefail -c "$(readme_block park-init)")
    cp "$work/$p/card.json" "$work/convener/$p.json"
done
(cd "$work/convener" && bash -euo pipefail -c "$(readme_block convener)")
member=""
port=17700
for p in "${readme_parks[@]}"; do
    cp "$work/convener/genesis.kvn" "$work/$p/"
    (cd "$work/$p" && PARK=$p MEMBER=$member API_PORT=$port P2P_PORT=$((port + 1)) bash -euo pipefail -c "$(readme_block park-join)")
    ip=$(docker inspect -f '{{(index .NetworkSettings.Networks "kervan").IPAddress}}' "kervan-$p")
    member="/ip4/$ip/tcp/7701"
    port=$((port + 10))
done
id=$(add_startup kervan-kz-abai-it-valley KZ)
wait_for 60 "the README parks to share a write" has_startup kervan-kz-jaiq-hub "$id"
wait_for 60 "the README parks to converge" same_digest kervan-kz-abai-it-valley kervan-kz-jaiq-hub
pass "the README's deploy steps give two parks that converge"

# ---- the six-park federation of deploy/compose.yaml ----
KERVAN_FEDERATION_DIR="$work/federation" deploy/federation-init.sh
"${compose[@]}" -p "$project" -f deploy/compose.yaml up -d
containers=()
for p in "${parks[@]}"; do containers+=("kervan-$p"); done
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy ]; }
for c in "${containers[@]}"; do wait_for 120 "$c to be healthy" healthy "$c"; done
pass "six parks up and healthy"

ids=()
ids+=("$(add_startup kervan-kz-astana-hub KZ)")
ids+=("$(add_startup kervan-uz-it-park UZ)")
ids+=("$(add_startup kervan-kg-htp KG)")
wait_for 120 "six parks to converge" same_digest "${containers[@]}"
for c in "${containers[@]}"; do for i in "${ids[@]}"; do has_startup "$c" "$i" || fail "$i missing at $c"; done; done
pass "writes at three parks reach all six"

# Partition: cut Bishkek off, write on both sides, reconnect.
network="${project}_kervan"
docker network disconnect "$network" kervan-kg-htp
ids+=("$(add_startup kervan-kz-astana-hub KZ)")
ids+=("$(add_startup kervan-kg-htp KG)")
sleep 2
has_startup kervan-kg-htp "${ids[3]}" && fail "a write crossed the partition"
docker network connect --ip 172.30.0.13 "$network" kervan-kg-htp
wait_for 120 "the partition to heal" same_digest "${containers[@]}"
for c in "${containers[@]}"; do for i in "${ids[@]}"; do has_startup "$c" "$i" || fail "$i missing at $c after the heal"; done; done
pass "a partition with writes on both sides heals with nothing lost"

# Kill Tashkent in the middle of a stream of writes at Astana, start it again.
for n in $(seq 1 10); do
    ids+=("$(add_startup kervan-kz-astana-hub KZ)")
    [ "$n" = 4 ] && docker kill kervan-uz-it-park >/dev/null
done
docker start kervan-uz-it-park >/dev/null
wait_for 120 "the killed park to be healthy" healthy kervan-uz-it-park
wait_for 120 "the killed park to catch up" same_digest "${containers[@]}"
for i in "${ids[@]}"; do has_startup kervan-uz-it-park "$i" || fail "$i missing at the restarted park"; done
pass "a container killed mid-write catches up"

echo "e2e: $passed passed, 0 failed"
