# Session 4, device call 5: what a small WGSL call pays for (bindings, buffers, allocations).
set -u
OUT_REAL=$OUT; OUT=/tmp/g5; rm -rf $OUT; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
if ! ldconfig -p | grep -q libvulkan.so.1; then for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; fi
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt
A="--implementation wgpu --layouts NHD --max-time 1 --num-tokens 2,8,64,1024"
step base 30 $P $A
step one-buffer 30 $P $A --wgpu-one-buffer on
step blocks-4096 30 $P $A --num-blocks 4096
step alloc-wgpu 30 $P $A --wgpu-cache-alloc wgpu
step fp8-base 30 $P $A --kv-cache-dtype fp8
step fp8-blocks-4096 30 $P $A --kv-cache-dtype fp8 --num-blocks 4096
