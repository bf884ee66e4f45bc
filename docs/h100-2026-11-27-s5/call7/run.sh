# Session 5, device call 7: the final build (the kernels of one item per thread wait by one
# warp, compiled in; no per-call flags): against the old wait, issue 15's CUDA rows with % of
# pattern, the other rows, the CUDA checks.
set -u
OUT_REAL=$OUT; OUT=/tmp/g; rm -rf $OUT; mkdir -p $OUT
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/date.txt
R="T=1|2|4|8|16|32|64|128|256|512|1024 cache=auto|fp8 set=0|1; T=8192|65536 lay=NHD|HND cache=auto|fp8 set=0|1"
step tune 80 .devbin/example-tune_cuda --deadline 70 --defines ";RCF_WAIT=0 RCF_LOCATE_FIRST=0" --rows "$R"
step verify-cuda 60 $P verify --implementation cuda --seed 7
step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 3 $P verify --implementation cuda --quick --seed 2
step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 3 $P verify --implementation cuda --quick --seed 3
step synccheck 60 compute-sanitizer --tool synccheck --error-exitcode 3 $P verify --implementation cuda --quick --seed 4
step cuda-auto 60 $P --implementation cuda --ceiling pattern --format json --output $OUT/cuda-auto.json
step cuda-fp8 60 $P --implementation cuda --kv-cache-dtype fp8 --ceiling pattern --format json --output $OUT/cuda-fp8.json
step cuda-rotate 40 $P --implementation cuda --rotate --ceiling pattern --num-tokens 512,1024,4096,8192 --format json --output $OUT/cuda-rotate.json
step cuda-fp8-rotate 40 $P --implementation cuda --rotate --kv-cache-dtype fp8 --ceiling pattern --num-tokens 512,1024,4096,8192 --format json --output $OUT/cuda-fp8-rotate.json
T=2,8,32,128,1024,8192,65536
step cuda-8h-bs32 40 $P --implementation cuda --num-heads 8 --block-size 32 --num-blocks 16384 --ceiling pattern --num-tokens $T --format json --output $OUT/cuda-8h-bs32.json
step cuda-d120-half 40 $P --implementation cuda --num-heads 32 --head-size 120 --dtype half --ceiling pattern --num-tokens $T --format json --output $OUT/cuda-d120-half.json
step cuda-d80-float-fp8 40 $P --implementation cuda --num-heads 32 --head-size 80 --dtype float --kv-cache-dtype fp8 --ceiling pattern --num-tokens $T --format json --output $OUT/cuda-d80-float-fp8.json
step user-beside 40 $P --implementation cuda --layouts NHD --kernel examples/kernels/copy.cu --num-tokens 2,8,16,32,64,128,1024 --format json --output $OUT/user-beside.json
step alone 40 $P --implementation cuda --layouts NHD --num-tokens 2,8,16,32,64,128,1024 --format json --output $OUT/alone.json
step backends-cuda 130 .devbin/backends --ignored --test-threads 1 cuda
step cuda-tests 120 .devbin/cuda --ignored --test-threads 1
