# Session 8, device call 7 (see steps.txt).
OUT_REAL=$OUT; export OUT=/tmp/g; rm -rf $OUT; mkdir -p $OUT
PACK=$OUT_REAL/r.tgz bash scripts/gpu-session.sh list=docs/h100-2026-11-27-s8/call7/steps.txt
