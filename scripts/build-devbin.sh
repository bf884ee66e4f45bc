#!/usr/bin/env bash
# Builds the release binary and test executables here (the GPU machine has no Rust) and copies
# them into .devbin/ (git-ignored) under stable names, to be carried to the GPU machine along
# with .gl/ (the Vulkan loader: scripts/fetch-vulkan-loader.sh). See scripts/gpu-session.sh.
# Usage: build-devbin.sh [--probe]   (--probe: the raw Vulkan probe too, .devbin/example-vulkan_probe)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .devbin
cargo build --release --examples --bins
cp target/release/paged-kv-bench .devbin/
for example in cpu cuda wgpu tune_cuda; do
    cp "target/release/examples/$example" ".devbin/example-$example"
done
# The raw Vulkan probe (examples/vulkan_probe) only when asked: with it the folder, the loader
# packages and the tracked tree no longer fit the device tool's 64 MiB carry.
if [ "${1:-}" = "--probe" ]; then
    cp target/release/examples/vulkan_probe .devbin/example-vulkan_probe
fi
cargo test --release --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = m["target"]["name"]
        name = "lib-tests" if name == "paged_kv_bench" and m["target"]["kind"] == ["lib"] else name
        # The GPU machine needs the library, backend and GPU-specific tests only.
        if name not in ("lib-tests", "backends", "cuda", "cuda_user", "wgpu"):
            continue
        shutil.copy(m["executable"], ".devbin/" + name)
        print(".devbin/" + name)
'
# Without debug information the carried tree stays far below the 64 MiB limit.
strip .devbin/*
ls -la .devbin
