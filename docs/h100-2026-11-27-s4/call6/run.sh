# Session 4, device call 6: the shared backend suites on CUDA (graphs and plain launches) and
# Vulkan with the final build, logs packed after every step.
set -u
OUT_REAL=$OUT; OUT=/tmp/g6; rm -rf $OUT; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
if ! ldconfig -p | grep -q libvulkan.so.1; then for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; fi
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
step backends-wgpu 100 .devbin/backends --test-threads 2 wgpu::
step backends-cuda 200 .devbin/backends --ignored --test-threads 1 cuda
