# Session 5, device call 3: large calls back to their speed (input offsets computed with the
# loads again), the wait variants on every kind of row, fp8 small-call shapes; verify all.
set -u
OUT_REAL=$OUT; OUT=/tmp/g; rm -rf $OUT; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
if ! ldconfig -p | grep -q libvulkan.so.1; then for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; fi
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/date.txt
D=";RCF_WAIT=0 RCF_LOCATE_FIRST=0;RCF_LOCATE_FIRST=0;RCF_WAIT=2"
R="lay=NHD|HND T=512|1024|8192|65536 cache=auto set=0|1|2; mode=r T=512|1024 cache=auto|fp8 set=0|1"
R="$R; T=1|2|4|8|16|32|64|128|256 cache=auto|fp8 set=0|1|2|3; cache=fp8 lay=NHD|HND T=1024|8192|65536 set=0|1"
R="$R; dt=half cache=fp8 T=64|8192 set=0|1; H=8 bs=32 nb=16384 T=2048|65536 cache=auto set=0|1"
R="$R; T=1|2|4|8|16 cache=fp8 shape=32x1|64x1 set=0|3"
step tune 200 .devbin/example-tune_cuda --deadline 190 --defines "$D" --rows "$R"
step verify 240 $P verify --implementation all --seed 1
