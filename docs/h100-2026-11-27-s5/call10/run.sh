# Session 5, device call 10: the final build, the last checks: verify on CUDA, and the small
# fp8 rows of the default sweep and of the shapes the small-block rule leaves alone.
set -u
OUT_REAL=$OUT; OUT=/tmp/g; rm -rf $OUT; mkdir -p $OUT
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/date.txt
step verify-cuda 60 $P verify --implementation cuda --seed 10
step cuda-fp8-small 30 $P --implementation cuda --kv-cache-dtype fp8 --ceiling pattern --num-tokens 1,2,4,8,16,64,128 --format json --output $OUT/cuda-fp8-small.json
step cuda-fp8-half 30 $P --implementation cuda --kv-cache-dtype fp8 --dtype half --layouts NHD --num-tokens 2,4,8 --format json --output $OUT/cuda-fp8-half.json
step cuda-fp8-8h 30 $P --implementation cuda --kv-cache-dtype fp8 --num-heads 8 --block-size 32 --num-blocks 16384 --layouts NHD --num-tokens 2,32,128 --format json --output $OUT/cuda-fp8-8h.json
