"""Reads citygate's Parquet lake with pyarrow and DuckDB and prints what each saw as JSON.

Usage: read_parquet.py PARQUET_ROOT DATASET
"""
import json
import sys

import duckdb
import pyarrow.dataset as pads
import pyarrow.parquet as pq

root, dataset = sys.argv[1], sys.argv[2]
base = f"{root}/dataset={dataset}"

table = pads.dataset(base, format="parquet", partitioning="hive").to_table()
types = {f.name: str(f.type) for f in table.schema}
table = table.sort_by([("sensor_id", "ascending")])
first_file = sorted(pads.dataset(base, format="parquet").files)[0]
file_meta = pq.read_metadata(first_file)
meta = file_meta.metadata or {}
columns_meta = {
    file_meta.row_group(0).column(i).path_in_schema: file_meta.row_group(0).column(i)
    for i in range(file_meta.num_columns)
}

con = duckdb.connect()
rows = con.execute(
    f"""
    SELECT sensor_id, vehicle_count, mean_speed, CAST(date AS VARCHAR) AS date,
           CAST(hour AS INTEGER) AS hour,
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
                "sensor_id_encodings": list(columns_meta["sensor_id"].encodings),
                "ts_encodings": list(columns_meta["ts"].encodings),
            },
            "duckdb": {
                "rows": [dict(zip(columns, [str(v) if k in ("date",) else v for k, v in zip(columns, r)])) for r in rows],
                "types": list(typeof),
            },
        }
    )
)
