"""The oracle for citygate's history aggregates: DuckDB over the same Parquet files.

usage: duckdb_aggregate.py PARQUET_ROOT DATASET FROM_US TO_US EVERY_US [TZ]
(with TZ, EVERY_US is whole days: buckets are local calendar days, by DuckDB's ICU)
prints JSON: [[bucket_us, sensor_id, count, mean, min, max, sum, first, last], ...] of
vehicle_count, by bucket then sensor.
"""

import json
import sys

import duckdb

root, dataset, lo, hi, every = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
tz = sys.argv[6] if len(sys.argv) > 6 else None
glob = f"{root}/dataset={dataset}/**/*.parquet"
if tz:
    days = every // 86_400_000_000
    bucket = f"epoch_us(time_bucket(INTERVAL '{days} days', ts, '{tz}'))"
else:
    bucket = f"t - (t % {every})"
rows = duckdb.sql(
    f"""
    WITH r AS (
        SELECT sensor_id, ts, epoch_us(ts) AS t, vehicle_count AS v
        FROM read_parquet('{glob}', hive_partitioning = true)
        WHERE epoch_us(ts) >= {lo} AND epoch_us(ts) < {hi} AND vehicle_count IS NOT NULL
    )
    SELECT {bucket} AS bucket, sensor_id, count(v), avg(v), min(v), max(v), sum(v),
           arg_min(v, t), arg_max(v, t)
    FROM r GROUP BY bucket, sensor_id ORDER BY bucket, sensor_id
    """
).fetchall()
print(json.dumps([[int(b), s, int(c), float(m), lo_, hi_, int(su), f, l]
                  for b, s, c, m, lo_, hi_, su, f, l in rows]))
