# Session 5, device call 5: the per-call wait flags (a run-time branch) against the same waits
# compiled in, side by side; and whether small rows move with the addresses of their buffers
# (device memory taken before the rows: 2 MiB, 64 MiB, 1000 MiB).
set -u
OUT_REAL=$OUT; OUT=/tmp/g; rm -rf $OUT; mkdir -p $OUT
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/date.txt
D=";RCF_WAIT=1;RCF_WAIT=2;ALLOC=2;ALLOC=64;ALLOC=1000;"
R="T=1|2|4|8|16|32|64|128|256|512 cache=auto|fp8 set=0|1|2; T=2|16|32|128 cache=auto|fp8 set=3|4|5|6"
R="$R; T=8192|65536 cache=auto|fp8 set=0|1"
step tune 200 .devbin/example-tune_cuda --deadline 190 --defines "$D" --rows "$R"
