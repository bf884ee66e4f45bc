# Session 4, device call 3: the correctness suites and the full verify on the final build.
set -u
OUT_REAL=$OUT
export OUT=/tmp/g3; rm -rf $OUT; mkdir -p $OUT
bash scripts/gpu-session.sh env tests sanitize verify
tar czf $OUT_REAL/r.tgz -C $OUT .
