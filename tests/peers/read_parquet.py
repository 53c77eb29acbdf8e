"""Reads citygate's Parquet lake with pyarrow and DuckDB and prints what each saw as JSON.

Usage: read_parquet.py PARQUET_ROOT DATASET
"""
import json
import sys

import duckdb
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

root, dataset = sys.argv[1], sys.argv[2]
base = f"{root}/dataset={dataset}"

table = pads.dataset(base, format="parquet", partitioning="hive").to_table()
types = {f.name: str(f.type) for f in table.schema}
# Sorting needs plain strings; the file keeps sensor_id dictionary-encoded.
column = table.schema.get_field_index("sensor_id")
table = table.set_column(column, "sensor_id", table.column("sensor_id").cast(pa.string()))
table = table.sort_by([("sensor_id", "ascending")])
first_file = sorted(pads.dataset(base, format="parquet").files)[0]
meta = pq.read_metadata(first_file).metadata or {}

con = duckdb.connect()
rows = con.execute(
    f"""
    SELECT sensor_id, vehicle_count, mean_speed, date, hour,
           epoch_us(ts) AS ts_us, ts_missing, lat, lon, seq
    FROM read_parquet('{base}/**/*.parquet', hive_partitioning = true)
    ORDER BY sensor_id
    """
).fetchall()
columns = [d[0] for d in con.description]
typeof = con.execute(
    f"SELECT typeof(sensor_id), typeof(ts), typeof(vehicle_count), typeof(mean_speed) "
    f"FROM read_parquet('{base}/**/*.parquet') LIMIT 1"
).fetchone()

print(
    json.dumps(
        {
            "pyarrow": {
                "rows": table.num_rows,
                "types": types,
                "sensor_id": [str(v) for v in table.column("sensor_id").to_pylist()],
                "vehicle_count": table.column("vehicle_count").to_pylist(),
                "mean_speed": table.column("mean_speed").to_pylist(),
                "metadata": {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"citygate")},
            },
            "duckdb": {
                "rows": [dict(zip(columns, [str(v) if k in ("date",) else v for k, v in zip(columns, r)])) for r in rows],
                "types": list(typeof),
            },
        }
    )
)
