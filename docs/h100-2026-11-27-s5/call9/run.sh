# Session 5, device call 9: small fp8 calls in blocks of about one per SM (build 4th-last
# commit of the session, see README) against 128-thread blocks, on several shapes; the checks.
set -u
OUT_REAL=$OUT; OUT=/tmp/g; rm -rf $OUT; mkdir -p $OUT
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/date.txt
R="cache=fp8 T=1|2|4|8|16 shape=d|128x1|32x1|64x1; lay=HND cache=fp8 T=2|4 shape=d|128x1"
R="$R; dt=half|float cache=fp8 T=2|4 shape=d|128x1; H=8 bs=32 nb=16384 cache=fp8 T=2|32|128 shape=d|128x1"
R="$R; H=32 D=80 dt=float cache=fp8 T=2|8 shape=d|128x1; cache=auto T=1|2|4|8 shape=d|32x1|64x1"
step tune 80 .devbin/example-tune_cuda --deadline 70 --rows "$R"
step verify-cuda 60 $P verify --implementation cuda --seed 9
step cuda-fp8-small 40 $P --implementation cuda --kv-cache-dtype fp8 --ceiling pattern --num-tokens 1,2,4,8,16,64 --format json --output $OUT/cuda-fp8-small.json
step cuda-tests 100 .devbin/cuda --ignored --test-threads 1
