#!/usr/bin/env bash
# Builds a statically linked `kervan` and the container image around it (FROM scratch).
# Usage: deploy/build-image.sh [TAG]   (default tag kervan:latest)
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-kervan:latest}"
target=x86_64-unknown-linux-gnu
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked -p kervan-node --bin kervan --target "$target"
context=deploy/image
rm -rf "$context"
mkdir -p "$context/rootfs/data"
cp "target/$target/release/kervan" "$context/rootfs/kervan"
strip "$context/rootfs/kervan" 2>/dev/null || true
docker build --quiet -t "$tag" -f deploy/Dockerfile "$context" >/dev/null
echo "built image $tag ($(du -h "$context/rootfs/kervan" | cut -f1) binary)"
