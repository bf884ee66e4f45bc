#!/usr/bin/env bash
# Runs on the GPU machine (carry .devbin and .gl; see scripts/build-devbin.sh): the checks and
# measurements the issues ask for, by stage, logs under $OUT (the device tool brings back at most
# 8 files: point OUT elsewhere and tar it). Usage: gpu-session.sh STAGE...
#   env       GPU, driver, clocks
#   tests     every ignored (GPU) test: CUDA and the shared suite on CUDA and Vulkan; the examples
#   verify    paged-kv-bench verify (full) on CUDA, then on wgpu (a step each)
#   sanitize  compute-sanitizer memcheck and racecheck over a quick CUDA verify run
#   bench     the default benchmark on CUDA and wgpu, auto and fp8 (JSON, tables, plots)
#   bench-more  rotating inputs, cold caches, half input, no_graph, other shapes
#   independence  the same rows alone and inside a longer sweep (CUDA and WGSL); with .oldbin/
#               (an older build) too, for before/after
#   workloads   two model presets x the four slot patterns, auto and fp8, CUDA (NHD, HND), WGSL
#   devices     --device all on CUDA and wgpu (a machine with several GPUs)
#   user        users' kernels: the CUDA user-kernel tests, and verify on both examples
#   user-bench  the example kernel and shader beside the built-in paths, with % of pattern
#   pattern     --ceiling pattern: CUDA fp8, rotating, other shapes; wgpu by cache allocation
#   list=FILE   the steps of FILE, one per line: NAME SECONDS COMMAND... (blank lines and lines
#               starting with # skipped; $B, $P (the benchmark) and $OUT are set, and the
#               command is run by bash, so quotes and variables work): a call's own commands
#               without a step() of its own
# With PACK=FILE.tgz, $OUT is packed into FILE after every step, so that a call cut off at the
# device's 600 s limit still brings back what it finished. `tests` alone takes most of that
# limit on an H100, and so may `verify`: run them in separate calls.
set -u
cd "$(dirname "$0")/.."
B=.devbin
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export XDG_RUNTIME_DIR=/tmp
if [ -d .gl ] && ! ldconfig -p | grep -q libvulkan.so.1; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi

step() { # name timeout command...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "   rc=$rc in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    tail -n 3 "$OUT/$name.txt" | sed 's/^/   | /' | tee -a "$OUT/summary.txt"
    if [ -n "${PACK:-}" ]; then tar czf "$PACK" -C "$OUT" .; fi
}

for stage in "$@"; do
    case $stage in
    env)
        step env 30 bash -c 'date -u; nvidia-smi; nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv'
        ;;
    tests)
        step lib-tests 60 $B/lib-tests
        step cuda-tests 240 $B/cuda --ignored --test-threads 1
        [ -x $B/cuda_user ] && step cuda-user-tests 300 $B/cuda_user --ignored --test-threads 1
        # `cuda` matches both CUDA suites: graph replays (cuda::) and plain launches (cuda_no_graph::).
        step backends-cuda 300 $B/backends --ignored --test-threads 1 cuda
        step backends-wgpu 300 $B/backends --test-threads 1 wgpu::
        [ -x $B/wgpu ] && step wgpu-tests 300 $B/wgpu --test-threads 1 --include-ignored
        step example-cuda 60 $B/example-cuda
        step example-wgpu 60 $B/example-wgpu
        ;;
    verify)
        # One implementation per step (the CPU subject runs in CI): `--implementation all`, four
        # subjects, took 364 s to over 520 s on H100s on 2026-11-27, too close to a device call's
        # 600 s with anything else in it. The wgpu half alone took 430 s, and over 430 s on
        # another machine, on 2026-11-27 (eighth session): give it a call of its own.
        step verify-cuda 300 $B/paged-kv-bench verify --implementation cuda --seed 1
        step verify-wgpu 540 $B/paged-kv-bench verify --implementation wgpu --seed 1
        ;;
    sanitize)
        step memcheck 300 compute-sanitizer --tool memcheck --error-exitcode 3 $B/paged-kv-bench verify --implementation cuda --quick --seed 2
        step racecheck 300 compute-sanitizer --tool racecheck --error-exitcode 3 $B/paged-kv-bench verify --implementation cuda --quick --seed 3
        ;;
    bench)
        # The default configuration (two 32 GiB caches), each path and cache dtype on its own.
        P=$B/paged-kv-bench
        step cuda-auto 300 $P --implementation cuda --format json --output "$OUT/cuda-auto.json" --plot "$OUT/cuda-auto.svg"
        step cuda-fp8 300 $P --implementation cuda --kv-cache-dtype fp8 --format json --output "$OUT/cuda-fp8.json" --plot "$OUT/cuda-fp8.svg"
        step wgpu-auto 300 $P --implementation wgpu --layouts NHD --format json --output "$OUT/wgpu-auto.json"
        step wgpu-fp8 300 $P --implementation wgpu --layouts NHD --kv-cache-dtype fp8 --format json --output "$OUT/wgpu-fp8.json"
        ;;
    bench-more)
        P=$B/paged-kv-bench
        T=2,64,512,1024,2048,4096,8192,65536
        R=512,1024,2048,4096,8192
        step cuda-auto-rotate 300 $P --implementation cuda --rotate --num-tokens $R --format json --output "$OUT/cuda-auto-rotate.json"
        step cuda-fp8-rotate 300 $P --implementation cuda --rotate --kv-cache-dtype fp8 --num-tokens $R --format json --output "$OUT/cuda-fp8-rotate.json"
        step wgpu-rotate 300 $P --implementation wgpu --layouts NHD --rotate --num-tokens $R --format json --output "$OUT/wgpu-rotate.json"
        step cuda-auto-cold 300 $P --implementation cuda --cold --num-tokens $T --format json --output "$OUT/cuda-auto-cold.json"
        step cuda-fp8-cold 300 $P --implementation cuda --cold --kv-cache-dtype fp8 --num-tokens $T --format json --output "$OUT/cuda-fp8-cold.json"
        step cuda-half-fp8 300 $P --implementation cuda --dtype half --kv-cache-dtype fp8 --num-tokens $T --format json --output "$OUT/cuda-half-fp8.json"
        step cuda-no-graph 300 $P --implementation cuda --mode no_graph --num-tokens 2,64,1024,65536 --format json --output "$OUT/cuda-no-graph.json"
        step cuda-8-heads 300 $P --implementation cuda --num-heads 8 --num-tokens 2,17,1000,4097,65536 --format json --output "$OUT/cuda-8-heads.json"
        step cuda-float-block32 300 $P --implementation cuda --dtype float --block-size 32 --num-blocks 16384 --num-tokens 2,17,1000,4097,65536 --format json --output "$OUT/cuda-float-block32.json"
        ;;
    independence)
        for bin in .oldbin .devbin; do
            [ -x $bin/paged-kv-bench ] || continue
            tag=${bin#.}
            for impl in cuda wgpu; do
                step ind-$tag-$impl-alone 200 $bin/paged-kv-bench --implementation $impl --layouts NHD --num-tokens 1024,8192 --format json --output "$OUT/ind-$tag-$impl-alone.json"
                step ind-$tag-$impl-sweep 300 $bin/paged-kv-bench --implementation $impl --layouts NHD --num-tokens 2,8,32,64,128,256,1024,8192 --format json --output "$OUT/ind-$tag-$impl-sweep.json"
            done
        done
        ;;
    workloads)
        P=$B/paged-kv-bench
        for model in llama-3.1-8b llama-3.1-70b-tp8; do
            for slots in random decode prefill mixed; do
                for cache in auto fp8; do
                    step wl-$model-$slots-$cache-cuda 120 $P --implementation cuda --model $model --slots $slots --kv-cache-dtype $cache --num-tokens 256,4096 --format json --output "$OUT/wl-$model-$slots-$cache-cuda.json"
                    step wl-$model-$slots-$cache-wgpu 120 $P --implementation wgpu --layouts NHD --model $model --slots $slots --kv-cache-dtype $cache --num-tokens 256,4096 --format json --output "$OUT/wl-$model-$slots-$cache-wgpu.json"
                done
            done
        done
        ;;
    devices)
        P=$B/paged-kv-bench
        step devices-cuda 200 $P --implementation cuda --device all --layouts NHD --num-tokens 1024,65536
        step devices-wgpu 200 $P --implementation wgpu --device all --layouts NHD --num-tokens 1024,65536
        ;;
    user)
        step cuda-user-tests 300 $B/cuda_user --ignored --test-threads 1
        step verify-user 300 $B/paged-kv-bench verify --implementation none --kernel examples/kernels/copy.cu --shader examples/kernels/copy.wgsl --seed 1
        ;;
    user-bench)
        P=$B/paged-kv-bench
        T=2,8,16,32,64,128,1024,4096,8192,65536
        step user-cuda-auto 400 $P --implementation cuda --kernel examples/kernels/copy.cu --ceiling pattern --num-tokens $T --format json --output "$OUT/user-cuda-auto.json"
        step user-wgpu-auto 300 $P --implementation wgpu --layouts NHD --shader examples/kernels/copy.wgsl --ceiling pattern --num-tokens $T --format json --output "$OUT/user-wgpu-auto.json"
        ;;
    pattern)
        P=$B/paged-kv-bench
        step pat-cuda-fp8 300 $P --implementation cuda --kv-cache-dtype fp8 --ceiling pattern --num-tokens 2,8,32,64,128,1024,8192,65536 --format json --output "$OUT/pat-cuda-fp8.json"
        step pat-cuda-rotate 300 $P --implementation cuda --rotate --ceiling pattern --num-tokens 512,1024,4096 --format json --output "$OUT/pat-cuda-rotate.json"
        step pat-cuda-8-heads 300 $P --implementation cuda --num-heads 8 --block-size 32 --ceiling pattern --num-tokens 2,32,128,1024,8192 --format json --output "$OUT/pat-cuda-8-heads.json"
        step pat-cuda-d120-half 300 $P --implementation cuda --num-heads 32 --head-size 120 --dtype half --ceiling pattern --num-tokens 2,32,128,1024,8192 --format json --output "$OUT/pat-cuda-d120-half.json"
        for alloc in wgpu dedicated; do
            step pat-wgpu-$alloc 300 $P --implementation wgpu --layouts NHD --wgpu-cache-alloc $alloc --ceiling pattern --num-tokens 2,8,64,1024,4096,8192,65536 --format json --output "$OUT/pat-wgpu-$alloc.json"
        done
        step pat-wgpu-fp8 300 $P --implementation wgpu --layouts NHD --kv-cache-dtype fp8 --ceiling pattern --num-tokens 2,64,1024,8192,65536 --format json --output "$OUT/pat-wgpu-fp8.json"
        ;;
    list=*)
        P=$B/paged-kv-bench
        export B P OUT
        while read -r name limit command; do
            case $name in '' | '#'*) continue ;; esac
            step "$name" "$limit" bash -c "$command" < /dev/null
        done < "${stage#list=}"
        ;;
    *)
        echo "unknown stage $stage" >&2
        ;;
    esac
done
echo "== done" | tee -a "$OUT/summary.txt"
