#!/usr/bin/env bash
# Downloads the Vulkan/EGL loader packages that a bare GPU machine may lack (the H100 test machine does) into .gl/ at the root of the
# current git checkout, and keeps that folder out of git. On the GPU machine, unpack them before running
# anything that uses wgpu:   for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
mkdir -p .gl /tmp/apt-amd64/partial .git/info
grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo '/.gl/' >> .git/info/exclude
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/apt-amd64'
apt-get $o update -qq
(cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
ls -1 .gl
