set -u
OUT_REAL=$OUT; OUT=/tmp/g; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; }
date -u > $OUT/date.txt
step wgpu-dedicated-tests 60 .devbin/wgpu --test-threads 2 dedicated
step backends-wgpu 90 .devbin/backends --test-threads 2 wgpu::
T=2,8,16,32,64,128,1024,4096,8192,65536
step user-cuda-auto 150 $P --implementation cuda --kernel examples/kernels/copy.cu --ceiling pattern --layouts NHD --num-tokens $T --format json --output $OUT/user-cuda-auto.json
step cuda-fp8 90 $P --implementation cuda --kv-cache-dtype fp8 --ceiling pattern --layouts NHD --num-tokens 2,8,32,64,128,1024,8192,65536 --format json --output $OUT/cuda-fp8.json
step wgpu-auto 120 $P --implementation wgpu --layouts NHD --ceiling pattern --num-tokens $T --format json --output $OUT/wgpu-auto.json
step wgpu-fp8 90 $P --implementation wgpu --layouts NHD --kv-cache-dtype fp8 --num-tokens 2,64,1024,8192,65536 --format json --output $OUT/wgpu-fp8.json
step wgpu-alloc-wgpu 90 $P --implementation wgpu --layouts NHD --wgpu-cache-alloc wgpu --num-tokens 1024,8192,65536 --format json --output $OUT/wgpu-alloc-wgpu.json
step user-wgpu 90 $P --implementation wgpu --layouts NHD --shader examples/kernels/copy.wgsl --num-tokens 2,64,1024,8192,65520 --format json --output $OUT/user-wgpu.json
step verify-user 60 $P verify --implementation none --kernel cu=examples/kernels/copy.cu --shader wgsl=examples/kernels/copy.wgsl --seed 1
left=$((545 - SECONDS)); [ $left -lt 30 ] && left=30
step verify-all $left $P verify --implementation all --seed 1
tar czf $OUT_REAL/r.tgz -C $OUT .
