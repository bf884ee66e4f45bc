# Session 4, device call 2: the fp8 peel on large calls, and the T=32 question with a user kernel beside.
set -u
OUT_REAL=$OUT; OUT=/tmp/g2; rm -rf $OUT; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; }
date -u > $OUT/date.txt
step tune-peel 200 .devbin/example-tune_cuda --deadline 190 --defines ";RCF_PEEL=1" --rows "T=1024|8192|65536 cache=fp8 lay=NHD|HND set=0|1; T=8192 cache=fp8 dt=half|float set=0|1; mode=r T=512|1024 cache=fp8 set=0|1; T=2|8|64|128 cache=fp8 set=0|1; H=8 bs=32 nb=16384 T=32|2048 cache=fp8 set=0|1"
step cubin 60 $P --implementation cuda --layouts NHD --kv-cache-dtype fp8 --num-tokens 2 --cuda-dump-cubin $OUT/k.cubin
step res 60 bash -c "cuobjdump -res-usage $OUT/k.cubin | grep -A1 -E 'fp8(_e5m2)?(_per_head)?(_x1)?$|fp8_x1|_auto_x1' | grep -v '^--'"
rm -f $OUT/k.cubin
step a-alone 60 $P --implementation cuda --layouts NHD --num-tokens 2,32
step b-alone-half 60 $P --implementation cuda --layouts NHD --num-tokens 2,32 --num-blocks 32768
step c-user 60 $P --implementation cuda --layouts NHD --kernel examples/kernels/copy.cu --num-tokens 2,32
step d-user-half 60 $P --implementation cuda --layouts NHD --kernel examples/kernels/copy.cu --num-tokens 2,32 --num-blocks 32768
step e-user-32 60 $P --implementation cuda --layouts NHD --kernel examples/kernels/copy.cu --num-tokens 32
tar czf $OUT_REAL/r.tgz -C $OUT .
