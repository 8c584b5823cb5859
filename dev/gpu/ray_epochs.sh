#!/usr/bin/env bash
# The Ray path's steady and whole-epoch rates alone on a lent GPU machine (see bench.sh for the set-up).
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export RAY_AUTH_MODE=disabled RAYEQ_CACHE=/tmp/rayeq-cache PYTHONPATH=/tmp/site:$PWD RAY_DEDUP_LOGS=1
mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site
python dev/gpu/replicate_builtin.py .gpu/subset.parquet .gpu/meta.json
timeout 170 python dev/gpu/ray_epochs.py
