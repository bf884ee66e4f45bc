# Session 5, device call 2: the new wait (warp 0 waits, the block follows through a barrier;
# items located first) against the old one on every kind of row, then the correctness suite.
set -u
OUT_REAL=$OUT; OUT=/tmp/g; rm -rf $OUT; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
if ! ldconfig -p | grep -q libvulkan.so.1; then for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; fi
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/date.txt
# The shared suite on Vulkan took over 120 s in call 1 (18 s in the fourth session): the build
# before the shader refactor (e1b679b) against this one, 45 s each.
step wgpu-suite-old 45 .devbin/backends-old --test-threads 2 wgpu::
step wgpu-suite-new 45 .devbin/backends --test-threads 2 wgpu::
D=";RCF_WAIT=0;RCF_WAIT=2"
R="T=1|2|4|8|16|32|64|128|256|512 cache=auto|fp8 set=0|1|2; lay=HND T=2|8|64|128 cache=auto|fp8 set=0|1"
R="$R; lay=NHD|HND T=1024|8192|65536 cache=auto|fp8 set=0|1; mode=r T=512|1024 cache=auto|fp8 set=0|1"
R="$R; H=8 bs=32 nb=16384 T=2|32|2048|65536 cache=auto|fp8 set=0|1; H=32 D=120 dt=half T=2|128|8192 set=0|1"
R="$R; H=32 D=80 dt=float cache=fp8 T=2|128|8192 set=0|1; dt=half cache=fp8 T=2|64|8192 set=0|1"
R="$R; T=2|4 cache=fp8 shape=64x1|32x1|256x1 set=0"
step tune-wait 235 .devbin/example-tune_cuda --deadline 225 --defines "$D" --rows "$R"
step verify 230 $P verify --implementation cuda --seed 1
step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 3 $P verify --implementation cuda --quick --seed 2
step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 3 $P verify --implementation cuda --quick --seed 3
step synccheck 60 compute-sanitizer --tool synccheck --error-exitcode 3 $P verify --implementation cuda --quick --seed 4
