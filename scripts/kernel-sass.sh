#!/usr/bin/env bash
# Registers and SASS of the built-in CUDA kernels for an H100 (sm_90), without a GPU: NVRTC 13.0
# (the H100 machine's), cuobjdump and nvdisasm (13.2, the oldest on PyPI) from PyPI, cached in
# ~/.cache/pkb-cuda-tools (or $PKB_CUDA_TOOLS), with the options of src/backend/cuda/compile.rs.
# Check registers and instruction order here before spending device time on a kernel change
# (docs/perf-log.md v9).
# Usage: scripts/kernel-sass.sh [-D NAME=VALUE]... [KERNEL]...
#   no KERNEL: registers and spills of every kernel; KERNEL (a name or a part of one, e.g.
#   bfloat16_auto_x1): its SASS too.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=${PKB_CUDA_TOOLS:-$HOME/.cache/pkb-cuda-tools}
if [ ! -x "$tools/nvidia/cu13/bin/nvdisasm" ]; then
    mkdir -p "$tools/wheels"
    pip download --quiet --no-deps -d "$tools/wheels" "nvidia-cuda-nvrtc==13.0.*" "nvidia-cuda-cuobjdump==13.2.*" "nvidia-cuda-nvdisasm==13.2.*"
    for wheel in "$tools"/wheels/*.whl; do python3 -m zipfile -e "$wheel" "$tools"; done
    chmod +x "$tools"/nvidia/cu13/bin/*
fi
defines=()
kernels=()
while [ $# -gt 0 ]; do
    case $1 in
    -D) defines+=("$2"); shift 2 ;;
    -D*) defines+=("${1#-D}"); shift ;;
    *) kernels+=("$1"); shift ;;
    esac
done
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
{ cat kernels/reshape_and_cache_flash.cu; echo '#line 1 "ceilings.cu"'; cat kernels/ceilings.cu; } > "$out/k.cu"
LD_LIBRARY_PATH="$tools/nvidia/cu13/lib" python3 - "$out/k.cu" "$out/k.cubin" "${defines[@]}" <<'PY'
import ctypes, sys
nvrtc = ctypes.CDLL("libnvrtc.so.13")
program = ctypes.c_void_p()
assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), open(sys.argv[1], "rb").read(), b"reshape_and_cache_flash.cu", 0, None, None) == 0
options = ["--gpu-architecture=sm_90", "--ftz=false", "--prec-div=true", "--std=c++17"] + ["-D" + d for d in sys.argv[3:]]
status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*[o.encode() for o in options]))
size = ctypes.c_size_t()
if status != 0:
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    sys.exit(log.value.decode())
nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size))
cubin = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetCUBIN(program, cubin)
open(sys.argv[2], "wb").write(cubin.raw)
PY
objdump=$tools/nvidia/cu13/bin/cuobjdump
export PATH="$tools/nvidia/cu13/bin:$PATH"  # cuobjdump -sass runs nvdisasm
# One line per kernel: name, registers, stack (bytes of spills and locals).
"$objdump" -res-usage "$out/k.cubin" |
    awk '/Function/ { name = $2; sub(":", "", name) } /REG:/ { print name, $1, $2 }' | sort | column -t
for kernel in "${kernels[@]}"; do
    for name in $("$objdump" -res-usage "$out/k.cubin" | awk '/Function/ { sub(":", "", $2); print $2 }' | grep -- "$kernel"); do
        echo "== $name"
        "$objdump" -sass -fun "$name" "$out/k.cubin" | grep -E '^ +/\*[0-9a-f]{4}\*/' |
            sed 's@ */\* 0x[0-9a-f]* \*/@@; s/ *;$//'
    done
done
