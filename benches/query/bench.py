"""History queries against DuckDB on the same Parquet files, interleaved (scripts/query-bench.sh).

A day of traffic-counts from SENSORS sensors every 10 s, ending now, posted to a running
citygate; then, ROUNDS times, each query on citygate over HTTP (JSON) and on DuckDB over
the dataset's Parquet files:
  (a) 15-minute buckets per sensor (count, mean, min, max) over 24 h
  (b) 1-hour buckets per sensor over the last 6 h (citygate: the hot store)
  (c) one sensor's raw readings over 24 h
  (d) the last reading of every sensor
and `latest` p99 over LATEST_N sequential requests.
"""

import json
import os
import statistics
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import duckdb

base, device, key, parquet_root = sys.argv[1:5]
sensors = int(os.environ.get("SENSORS", "1000"))
rounds = int(os.environ.get("ROUNDS", "5"))
latest_n = int(os.environ.get("LATEST_N", "200"))
DAY = 24 * 3600
now = int(time.time())
start = now - DAY
steps = DAY // 10
total = steps * sensors


def post(lines):
    req = urllib.request.Request(
        f"{base}/v1/datasets/traffic-counts/readings",
        data="\n".join(lines).encode(),
        headers={"Authorization": f"Bearer {device}", "Content-Type": "application/x-ndjson"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        assert r.status == 204, r.status


def batches(per=20000):
    lines = []
    for step in range(steps):
        t = (start + step * 10) * 1000
        for s in range(sensors):
            lines.append(
                f'{{"sensor_id":"tc-{s:04}","ts":{t},"vehicle_count":{(step * 7 + s * 13) % 97},'
                f'"mean_speed":{20 + (step + s) % 60}.5}}'
            )
            if len(lines) == per:
                yield lines
                lines = []
    if lines:
        yield lines


def metric(name):
    """The sum of a metric over its labels."""
    with urllib.request.urlopen(f"{base}/metrics") as r:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in r.read().decode().splitlines()
            if line.startswith(name + " ") or line.startswith(name + "{")
        )


t0 = time.time()
with ThreadPoolExecutor(4) as pool:
    list(pool.map(post, batches()))
load = time.time() - t0
print(f"loaded {total} readings in {load:.1f} s ({total / load:,.0f}/s)", flush=True)
while metric("citygate_parquet_rows_written_total") < total:
    time.sleep(1)
time.sleep(2)  # the hot store lets written chunks past its window go
hot_bytes = metric("citygate_query_hot_store_bytes")
hot_readings = metric("citygate_query_hot_store_readings")
print(f"hot store: {hot_readings:,.0f} readings in {hot_bytes / 2**20:.1f} MiB = "
      f"{hot_bytes / max(hot_readings, 1):.1f} bytes per reading", flush=True)


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


frm, six = iso(start), iso(now - 6 * 3600)
glob = f"{parquet_root}/dataset=traffic-counts/**/*.parquet"
db = duckdb.connect()
db.execute("SET threads TO 2")
src = f"read_parquet('{glob}', hive_partitioning = true)"
queries = {
    "a 15m buckets/sensor 24h": (
        f"/v1/datasets/traffic-counts/aggregate?from={frm}&to={iso(now + 1)}&every=15m&fn=count,mean,min,max&fields=vehicle_count",
        f"SELECT epoch_us(ts) // 900000000 AS b, sensor_id, count(vehicle_count), avg(vehicle_count), "
        f"min(vehicle_count), max(vehicle_count) FROM {src} WHERE ts >= TIMESTAMPTZ '{frm}' "
        f"GROUP BY ALL ORDER BY b, sensor_id",
    ),
    "b 1h buckets/sensor last 6h (hot)": (
        f"/v1/datasets/traffic-counts/aggregate?from={six}&to={iso(now + 1)}&every=1h&fn=count,mean,min,max&fields=vehicle_count",
        f"SELECT epoch_us(ts) // 3600000000 AS b, sensor_id, count(vehicle_count), avg(vehicle_count), "
        f"min(vehicle_count), max(vehicle_count) FROM {src} WHERE ts >= TIMESTAMPTZ '{six}' "
        f"GROUP BY ALL ORDER BY b, sensor_id",
    ),
    "c one sensor raw 24h": (
        f"/v1/datasets/traffic-counts/history?from={frm}&to={iso(now + 1)}&sensors=tc-0042&limit=10000",
        f"SELECT * FROM {src} WHERE sensor_id = 'tc-0042' AND ts >= TIMESTAMPTZ '{frm}' ORDER BY ts",
    ),
    "d latest per sensor": (
        "/v1/datasets/traffic-counts/latest",
        f"SELECT sensor_id, arg_max(vehicle_count, ts), max(ts) FROM {src} "
        f"WHERE ts >= TIMESTAMPTZ '{iso(now - DAY)}' GROUP BY sensor_id ORDER BY sensor_id",
    ),
}


def ask(path):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=300) as r:
        body = r.read()
    took = time.perf_counter() - t
    doc = json.loads(body)
    return took, len(doc.get("buckets", doc.get("readings", [])))


def duck(sql):
    t = time.perf_counter()
    rows = db.execute(sql).fetchall()
    return time.perf_counter() - t, len(rows)


times = {name: {"citygate": [], "duckdb": []} for name in queries}
for r in range(rounds):
    for name, (path, sql) in queries.items():
        took, n1 = ask(path)
        times[name]["citygate"].append(took)
        took, n2 = duck(sql)
        times[name]["duckdb"].append(took)
        if r == 0:
            print(f"  {name}: citygate {n1} rows, duckdb {n2} rows", flush=True)

print(f"\nmedian of {rounds} interleaved rounds (seconds):")
print(f"{'query':38} {'citygate':>10} {'duckdb':>10} {'speed vs duckdb':>16}")
for name, t in times.items():
    c, d = statistics.median(t["citygate"]), statistics.median(t["duckdb"])
    print(f"{name:38} {c:10.4f} {d:10.4f} {d / c:15.2f}x")

lat = []
for _ in range(latest_n):
    lat.append(ask("/v1/datasets/traffic-counts/latest")[0])
lat.sort()
print(f"\nlatest over HTTP, {latest_n} requests: p50 {lat[len(lat) // 2] * 1000:.2f} ms, "
      f"p99 {lat[int(len(lat) * 0.99) - 1] * 1000:.2f} ms")
