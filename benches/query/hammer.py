"""Heavy history queries in a loop, for scripts/query-load.sh: CLIENTS threads each ask, in
turn, a day of 15-minute buckets per sensor and one sensor's raw day (JSON), until SECONDS
have passed; prints how many were answered (and how many were told to wait: 503/429).

usage: hammer.py BASE KEY SECONDS CLIENTS
"""

import sys
import threading
import time
import urllib.error
import urllib.request

base, key, seconds, clients = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
now = int(time.time())


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


frm, to = iso(now - 24 * 3600), iso(now + 3600)
paths = [
    f"/v1/datasets/traffic-counts/aggregate?from={frm}&to={to}&every=15m&fn=count,mean,min,max&fields=vehicle_count",
    f"/v1/datasets/traffic-counts/history?from={frm}&to={to}&sensors=tc-0042&limit=10000",
]
answered, waited, lock = [0], [0], threading.Lock()
end = time.time() + seconds


def client(n):
    i = n
    while time.time() < end:
        req = urllib.request.Request(base + paths[i % 2], headers={"Authorization": f"Bearer {key}"})
        i += 1
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
            with lock:
                answered[0] += 1
        except urllib.error.HTTPError as e:
            with lock:
                waited[0] += 1
            time.sleep(float(e.headers.get("Retry-After", "1")))


threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(f"queries: {answered[0]} answered in {seconds:.0f} s ({answered[0] / seconds:.1f}/s), "
      f"{waited[0]} told to wait", flush=True)
