# Session 5, device call 1: the programmatic-launch wait on small CUDA calls, the second-backend
# question (T = 32), and the WGSL rows after the shader refactor (issue 15).
set -u
OUT_REAL=$OUT; OUT=/tmp/g; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/date.txt
# 1. Small CUDA calls: where the wait happens and who waits; the empty grid; no PDL; a second backend.
D=";RCF_PREWAIT=1;RCF_WAIT_WARP=1;RCF_WAIT_WARP=2;RCF_PREWAIT=1 RCF_WAIT_WARP=2;RCF_EMPTY=1;RCF_EMPTY=1 RCF_WAIT_WARP=2;RCF_EMPTY=1 RCF_PDL=0 PDL_LAUNCH=0;RCF_PDL=0 PDL_LAUNCH=0;SHADOW=open;SHADOW=call;SHADOW=timed;"
R="T=2|4|8|32|64|128|256 cache=auto|fp8 shape=d set=0|1|2|3|4|5|6|7|8; T=2|32|128 cache=auto set=9|10|11; lay=HND T=2|8|128 cache=auto|fp8 set=0|1|4; T=2|32|128 cache=auto|fp8 set=12"
step tune-wait 300 .devbin/example-tune_cuda --deadline 290 --defines "$D" --rows "$R"
# 2. The SASS of the auto and fp8 kernels of one item, with and without the early location.
for d in 0 1; do
  step cubin-$d 60 $P --implementation cuda --layouts NHD --num-tokens 2 --cuda-define RCF_PREWAIT=$d --cuda-dump-cubin $OUT/k$d.cubin
  step sass-$d 60 bash -c "for k in bfloat16_auto_x1 bfloat16_fp8_x1; do cuobjdump -sass -fun reshape_and_cache_flash_\$k $OUT/k$d.cubin | head -120; done"
  rm -f $OUT/k$d.cubin
done
# 3. WGSL after the shader refactor (e0f7fed): small and large rows, and the shared suite on Vulkan.
step wgpu-fp8 90 $P --implementation wgpu --layouts NHD --kv-cache-dtype fp8 --max-time 1 --num-tokens 2,8,32,64,1024,8192 --format json --output $OUT/wgpu-fp8.json
step wgpu-auto 90 $P --implementation wgpu --layouts NHD --max-time 1 --num-tokens 2,8,64,1024,8192 --format json --output $OUT/wgpu-auto.json
step backends-wgpu 120 .devbin/backends --test-threads 1 wgpu::
