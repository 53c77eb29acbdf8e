"""Reads history answers as a planner's tools do: the Arrow IPC stream with pyarrow, the
Parquet download with pyarrow, the CSV with DuckDB.

usage: read_query_formats.py ANSWER.arrows ANSWER.parquet ANSWER.csv
prints JSON: {"arrow": {"types": {...}, "rows": [...]}, "parquet": {...}, "csv": {...}}
"""

import json
import sys

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq


def describe(table):
    return {
        "types": {f.name: str(f.type) for f in table.schema},
        "rows": [
            {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
            for row in table.to_pylist()
        ],
    }


arrow_path, parquet_path, csv_path = sys.argv[1:4]
with pa.ipc.open_stream(open(arrow_path, "rb")) as reader:
    arrow = reader.read_all()
parquet = pq.read_table(parquet_path)
csv = duckdb.sql(f"SELECT * FROM read_csv('{csv_path}', header = true)")
print(json.dumps({
    "arrow": describe(arrow),
    "parquet": describe(parquet),
    "csv": {"columns": csv.columns, "types": [str(t) for t in csv.types], "rows": len(csv.fetchall())},
}, default=str))
