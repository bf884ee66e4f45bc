#!/usr/bin/env bash
# The project's test command (README.md; CI runs it through .ci/run). Installs what the tests
# need on a fresh Debian/Ubuntu machine (software Vulkan, so the WGSL shaders really run), then
# checks formatting and lints, and runs every test that needs no NVIDIA GPU.
# CUDA tests are #[ignore]d here; run them on a GPU machine with: cargo test --release -- --ignored
set -euo pipefail
cd "$(dirname "$0")/.."

# Lavapipe (Vulkan) for the wgpu tests, and Mesa's llvmpipe through EGL (OpenGL) as a second
# graphics API for the same shaders.
if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 ||
    ! ls /usr/lib/*/dri/swrast_dri.so >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "installing Mesa's software Vulkan (lavapipe) and OpenGL (llvmpipe) for the wgpu tests"
        sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
            mesa-vulkan-drivers libegl1 libgl1-mesa-dri >/dev/null
    else
        echo "warning: no apt-get; install a Vulkan driver (e.g. Mesa's lavapipe) for the wgpu tests" >&2
    fi
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
# Mesa's Vulkan layer complains on every adapter listing without it; the command sets it itself
# at start-up, the test binaries (which open adapters from many threads) cannot.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"

cargo fmt --all -- --check
cargo clippy --release --all-targets -- -D warnings
cargo test --release
# The user-facing cross-backend check over the full matrix (CPU, and WGSL on lavapipe), with a
# fresh seed each run: a failure prints the seed that replays it.
cargo run --release --quiet -- verify
# The same shaders through OpenGL (llvmpipe): 16 storage buffers per stage, so the one-chunk
# kernels.
cargo run --release --quiet -- verify --quick --implementation wgpu --wgpu-api gl
# A user's shader (the example) verified and timed beside the built-in WGSL path.
cargo run --release --quiet -- --implementation wgpu --shader examples/kernels/copy.wgsl \
    --num-tokens 16,256 --num-heads 8 --max-time 0.2 >/dev/null
# The library used from a program, as a serving engine would (see examples/).
cargo run --release --quiet --example cpu
cargo run --release --quiet --example wgpu
