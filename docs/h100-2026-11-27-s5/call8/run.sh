# Session 5, device call 8: the final build (0a37059): verify over every implementation, then
# the shared backend suite on Vulkan with four threads and room to finish.
set -u
OUT_REAL=$OUT; OUT=/tmp/g; rm -rf $OUT; mkdir -p $OUT
export XDG_RUNTIME_DIR=/tmp
if ! ldconfig -p | grep -q libvulkan.so.1; then for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig; fi
P=.devbin/paged-kv-bench
step(){ n=$1; l=$2; shift 2; s=$SECONDS; timeout $l "$@" > $OUT/$n.txt 2>&1; echo "== $n rc=$? $((SECONDS-s))s" | tee -a $OUT/summary.txt; tar czf $OUT_REAL/r.tgz -C $OUT .; }
date -u > $OUT/date.txt; nvidia-smi --query-gpu=name,driver_version --format=csv >> $OUT/date.txt
step verify-all 250 $P verify --implementation all --seed 8
step backends-wgpu 280 .devbin/backends --test-threads 4 wgpu::
