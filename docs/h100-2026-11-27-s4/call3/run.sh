# Session 4, device call 3, second try (call3/run-first-try.sh ran the whole GPU test stage past the 600 s
# limit and brought nothing back): the full verify and the CUDA kernel tests that the fp8 peel
# touches, the logs packed after every step.
set -u
OUT_REAL=$OUT; OUT=/tmp/g3b; rm -rf $OUT; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
if ! ldconfig -p | grep -q libvulkan.so.1; then for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; fi
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt
step verify 230 $P verify --implementation all --seed 1
step cuda-fp8-exhaustive 60 .devbin/cuda --ignored --test-threads 1 fp8_
step cuda-shapes 40 .devbin/cuda --ignored --test-threads 1 every_launch_shape graph_and_plain
step memcheck 40 compute-sanitizer --tool memcheck --error-exitcode 3 $P verify --implementation cuda --quick --seed 2
