"""Make a stand-in for the built-in set on a machine that cannot render it (no pybullet): the rows of
`SUBSET` (a Parquet file of built-in rows) repeated to the built-in set's size, in its cache directory,
with its meta.json. Pixels repeat every len(SUBSET) objects, so this is for timing only, never for
accuracy. Usage: python dev/gpu/replicate_builtin.py SUBSET META_JSON"""

import json
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from rayeq.data.builtin import DATA, builtin_data_dir

subset, meta_file = sys.argv[1], sys.argv[2]
rows = pq.read_table(subset).to_pylist()
with open(meta_file) as f:
    meta = json.load(f)
out = builtin_data_dir("standard")
out.mkdir(parents=True, exist_ok=True)
n = DATA["classes"] * DATA["objects_per_class"]
schema = pq.read_schema(subset)
shards, splits, per_shard = [], {"train": 0, "val": 0}, 1024
for start in range(0, n, per_shard):
    part = [
        dict(rows[k % len(rows)], object_id=f"{rows[k % len(rows)]['object_id']}-r{k}")
        for k in range(start, min(n, start + per_shard))
    ]
    for r in part:
        splits[r["split"]] += 1
    name = f"shard-{len(shards):05d}.parquet"
    pq.write_table(pa.Table.from_pylist(part, schema=schema), out / name)
    shards.append(name)
(out / "meta.json").write_text(json.dumps({**meta, "splits": splits, "shards": shards, "replicated_from": len(rows)}))
print(f"replicated {len(rows)} objects to {n} at {out}: {splits}")
