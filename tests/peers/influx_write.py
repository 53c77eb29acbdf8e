"""Writes readings to citygate with the official InfluxDB v2 Python client (gzip on).

Usage: influx_write.py URL TOKEN BUCKET
Prints the number of points written.
"""
import sys
import time

from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

url, token, bucket = sys.argv[1], sys.argv[2], sys.argv[3]
now = time.time_ns()
points = [
    Point("traffic")
    .tag("sensor", f"py-{i:03d}")
    .tag("host", "edge-gw")
    .field("vehicle_count", i)
    .field("mean_speed", 30.0 + i / 2)
    .time(now - i * 1_000_000_000, WritePrecision.NS)
    for i in range(25)
]
with InfluxDBClient(url=url, token=token, org="city", enable_gzip=True) as client:
    client.write_api(write_options=SYNCHRONOUS).write(bucket=bucket, record=points)
    # A line that does not fit the schema is reported back, not silently dropped.
    try:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=bucket, record="traffic,sensor=py-bad vehicle_count=-3i"
        )
        print("unexpected success", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # ApiException with status 422
        status = getattr(e, "status", None)
        if status != 422:
            print(f"expected 422, got {status}: {e}", file=sys.stderr)
            sys.exit(3)
print(len(points))
