#!/usr/bin/env bash
# Creates the six founding parks of deploy/compose.yaml: a data volume per park with its device
# key and config (`kervan init`), the genesis from their park cards (`kervan genesis`), and each
# park joined to it (`kervan join`). Then `docker compose -f deploy/compose.yaml up -d` (or
# `docker-compose -f ...`) runs the federation.
#
# Environment: KERVAN_IMAGE (default kervan:latest); KERVAN_FEDERATION_DIR, where the park
# cards and genesis.kvn are written (default deploy/federation).
set -euo pipefail
cd "$(dirname "$0")"
image="${KERVAN_IMAGE:-kervan:latest}"
out="${KERVAN_FEDERATION_DIR:-$PWD/federation}"
parks=(
    "kz-astana-hub|Astana Hub|KZ|Astana"
    "uz-it-park|IT Park Uzbekistan|UZ|Tashkent"
    "kg-htp|High Technology Park of the Kyrgyz Republic|KG|Bishkek"
    "az-sabah-lab|Sabah Lab|AZ|Baku"
    "tr-bilisim-vadisi|Bilişim Vadisi|TR|Kocaeli"
    "tr-bilkent-cyberpark|Bilkent Cyberpark|TR|Ankara"
)
if [ -e "$out/genesis.kvn" ]; then
    echo "error: $out/genesis.kvn exists: this federation was made already" >&2
    exit 1
fi
mkdir -p "$out"
cards=()
for entry in "${parks[@]}"; do
    IFS='|' read -r id name country city <<<"$entry"
    if docker volume inspect "kervan-$id" >/dev/null 2>&1; then
        echo "error: volume kervan-$id exists; remove it first (docker volume rm kervan-$id)" >&2
        exit 1
    fi
    docker volume create "kervan-$id" >/dev/null
    docker run --rm -v "kervan-$id:/data" "$image" \
        init --park "$id" --name "$name" --country "$country" --city "$city" \
        >"$out/$id.json" 2>/dev/null
    cards+=(--card "/cards/$id.json")
done
docker run --rm -v "$out:/cards:ro" "$image" \
    genesis --name "OTS technopark federation" "${cards[@]}" --out - \
    >"$out/genesis.kvn" 2>"$out/federation-id"
for entry in "${parks[@]}"; do
    IFS='|' read -r id _ <<<"$entry"
    docker run --rm -v "kervan-$id:/data" -v "$out:/cards:ro" "$image" \
        join --genesis /cards/genesis.kvn >/dev/null
done
echo "federation $(cat "$out/federation-id") with ${#parks[@]} parks; cards and genesis in $out"
