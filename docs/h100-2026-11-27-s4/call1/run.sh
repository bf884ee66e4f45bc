# Session 4, device call 1: experiments that decide this session's changes (issue 15).
set -u
OUT_REAL=$OUT; OUT=/tmp/g; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; }
date -u > $OUT/date.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/date.txt
# 1. WGSL: the slot-order pass with dedicated cache allocations.
for o in on off; do
  step wgpu-order-$o 90 $P --implementation wgpu --layouts NHD --wgpu-slot-order $o --ceiling pattern --num-tokens 2048,4096,8192,16384,65536 --format json --output $OUT/wgpu-order-$o.json
done
step wgpu-fp8-order-off 60 $P --implementation wgpu --layouts NHD --kv-cache-dtype fp8 --wgpu-slot-order off --num-tokens 4096,8192,65536 --format json --output $OUT/wgpu-fp8-order-off.json
step wgpu-rotate-order-off 60 $P --implementation wgpu --layouts NHD --rotate --wgpu-slot-order off --num-tokens 4096,8192 --format json --output $OUT/wgpu-rotate-order-off.json
# 2. CUDA small calls: exactness, peeling, the launch floor, shapes.
step tune-small 200 .devbin/example-tune_cuda --deadline 190 --defines ";RCF_PEEL=3;RCF_FP8_INEXACT=1;RCF_EMPTY=1" --rows "T=2|4|8|32|64|128 cache=fp8 shape=d set=0|1|2|3; T=32|64|128 cache=fp8 shape=256x1|128x2|64x1|512x1; T=2|4|8|32|128 cache=auto shape=d set=0|3; T=1 H=1 D=64 cache=auto|fp8 shape=d set=0|3"
# 3. The T=32 question: the same row alone, in a sweep, with the pattern column, beside a user kernel.
step ind-32-alone 60 $P --implementation cuda --layouts NHD --num-tokens 32 --format json --output $OUT/ind-32-alone.json
step ind-32-sweep 60 $P --implementation cuda --layouts NHD --num-tokens 2,8,16,32,64,128,1024 --format json --output $OUT/ind-32-sweep.json
step ind-32-pattern 60 $P --implementation cuda --layouts NHD --ceiling pattern --num-tokens 2,8,16,32,64,128,1024 --format json --output $OUT/ind-32-pattern.json
step ind-32-user 90 $P --implementation cuda --layouts NHD --kernel examples/kernels/copy.cu --num-tokens 2,8,16,32,64,128,1024 --format json --output $OUT/ind-32-user.json
# 4. Where fp8 T=64 spends its time: ncu on one call, auto beside it, and the SASS.
N="ncu --clock-control none --launch-skip 300 --launch-count 1 --section SpeedOfLight --section Occupancy --section WarpStateStats --section InstructionStats --section SchedulerStats --section LaunchStats"
step ncu-fp8-64 90 $N -k regex:bfloat16_fp8_x1 $P --implementation cuda --mode no_graph --layouts NHD --kv-cache-dtype fp8 --num-tokens 64
step ncu-auto-64 90 $N -k regex:bfloat16_auto_x1 $P --implementation cuda --mode no_graph --layouts NHD --num-tokens 64
step cubin 60 $P --implementation cuda --layouts NHD --kv-cache-dtype fp8 --num-tokens 2 --cuda-dump-cubin $OUT/k.cubin
step sass 60 bash -c "cuobjdump -sass -fun reshape_and_cache_flash_bfloat16_fp8_x1 $OUT/k.cubin || /usr/local/cuda/bin/cuobjdump -sass -fun reshape_and_cache_flash_bfloat16_fp8_x1 $OUT/k.cubin"
rm -f $OUT/k.cubin
tar czf $OUT_REAL/r.tgz -C $OUT .
