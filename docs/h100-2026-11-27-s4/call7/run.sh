# Session 4, device call 7: small fp8 WGSL calls with units split among four threads, against
# whole units and the lookup table (the previous default), and a quick verify on the GPU.
set -u
OUT_REAL=$OUT; OUT=/tmp/g7; rm -rf $OUT; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
if ! ldconfig -p | grep -q libvulkan.so.1; then for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; fi
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt
A="--implementation wgpu --layouts NHD --kv-cache-dtype fp8 --max-time 1 --num-tokens 2,4,8,16,32,64,128,256"
step verify-wgpu 60 $P verify --implementation wgpu --quick --seed 4
step fp8-split 40 $P $A --format json --output $OUT/fp8-split.json
step fp8-whole-lut 40 $P $A --wgpu-fp8-split off --format json --output $OUT/fp8-whole-lut.json
step fp8-split-forced 30 $P --implementation wgpu --layouts NHD --kv-cache-dtype fp8 --max-time 1 --wgpu-fp8-split on --num-tokens 64,128,256,512
step fp8-large 30 $P --implementation wgpu --layouts NHD --kv-cache-dtype fp8 --max-time 1 --num-tokens 1024,8192
step auto-small 30 $P --implementation wgpu --layouts NHD --max-time 1 --num-tokens 2,64,1024
