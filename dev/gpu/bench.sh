#!/usr/bin/env bash
# The GPU figures of docs/PERFORMANCE.md, on a lent GPU machine with no network (see dev/gpu/README.md):
# unpack the carried Ray, stand in for the built-in set, then `rayeq bench throughput` (plain DataLoader
# loop vs Ray Train + Ray Data), the same with torch.compile, and the Ray Data pipeline's pairs/s.
set -u
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export RAY_AUTH_MODE=disabled RAYEQ_CACHE=/tmp/rayeq-cache PYTHONPATH=/tmp/site:$PWD RAY_DEDUP_LOGS=1
T0=$(date +%s); stamp() { echo "=== $(( $(date +%s) - T0 )) s: $*"; }
stamp start; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"; nproc; free -g
mkdir -p /tmp/site && tar -xJf .gpu/site.tar.xz -C /tmp/site
RAY=1; timeout 60 python -c "import ray; ray.init(); print(ray.cluster_resources()); ray.shutdown()" || RAY=0
stamp "ray ok=$RAY"
python dev/gpu/replicate_builtin.py .gpu/subset.parquet .gpu/meta.json
RQ=(python -c "import sys; from rayeq.cli import main; sys.exit(main())")
common=(--method xrecon --size 64 --batch 512 --data-cpus 14 --set model.stem=small --set 'model.projector=[2048,2048,2048]'
        --set method.decoder.width=256 --set train.steps_per_epoch=53)
stamp "bench throughput (plain vs Ray)"
timeout 280 "${RQ[@]}" bench throughput "${common[@]}" --out "$OUT/xrecon.json" $([ $RAY = 1 ] || echo --skip-ray)
stamp "Ray Data pipeline alone, 14 actors"
[ $RAY = 1 ] && timeout 80 python dev/gpu/data_rate.py
stamp "bench throughput --compile (plain only)"
timeout 120 "${RQ[@]}" bench throughput "${common[@]}" --compile --skip-ray --steps 30 --epochs 3 --repeats 2 --out "$OUT/xrecon_compile.json"
stamp done
