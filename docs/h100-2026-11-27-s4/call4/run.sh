# Session 4, device call 4: issue 15's table on the final build, every row with its pattern.
set -u
OUT_REAL=$OUT; OUT=/tmp/g4; rm -rf $OUT; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
if ! ldconfig -p | grep -q libvulkan.so.1; then for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; fi
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/date.txt
step cuda-auto 150 $P --implementation cuda --ceiling pattern --format json --output $OUT/cuda-auto.json
step cuda-fp8 150 $P --implementation cuda --kv-cache-dtype fp8 --ceiling pattern --format json --output $OUT/cuda-fp8.json
step wgpu-auto 120 $P --implementation wgpu --layouts NHD --ceiling pattern --format json --output $OUT/wgpu-auto.json
step wgpu-fp8 120 $P --implementation wgpu --layouts NHD --kv-cache-dtype fp8 --ceiling pattern --format json --output $OUT/wgpu-fp8.json
step cuda-rotate 90 $P --implementation cuda --rotate --ceiling pattern --num-tokens 512,1024,4096,8192 --format json --output $OUT/cuda-rotate.json
step cuda-fp8-rotate 90 $P --implementation cuda --rotate --kv-cache-dtype fp8 --ceiling pattern --num-tokens 512,1024,4096,8192 --format json --output $OUT/cuda-fp8-rotate.json
step cuda-8h-bs32 90 $P --implementation cuda --num-heads 8 --block-size 32 --num-blocks 16384 --ceiling pattern --num-tokens 2,8,32,128,1024,8192,65536 --format json --output $OUT/cuda-8h-bs32.json
step cuda-d120-half 90 $P --implementation cuda --num-heads 32 --head-size 120 --dtype half --ceiling pattern --num-tokens 2,8,32,128,1024,8192,65536 --format json --output $OUT/cuda-d120-half.json
step cuda-d80-float-fp8 90 $P --implementation cuda --num-heads 32 --head-size 80 --dtype float --kv-cache-dtype fp8 --ceiling pattern --num-tokens 2,8,32,128,1024,8192,65536 --format json --output $OUT/cuda-d80-float-fp8.json
step wgpu-8h-bs32 90 $P --implementation wgpu --layouts NHD --num-heads 8 --block-size 32 --num-blocks 16384 --ceiling pattern --num-tokens 2,8,32,128,1024,8192,65536 --format json --output $OUT/wgpu-8h-bs32.json
tar czf $OUT_REAL/r.tgz -C $OUT .
