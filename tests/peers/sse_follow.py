"""A browser-style EventSource client (sseclient-py over requests) following a live feed.

    sse_follow.py URL KEY COUNT [LAST_EVENT_ID]

Connects as a browser's EventSource does (the key in the query string, `Accept:
text/event-stream`, `Last-Event-ID` when resuming), reads COUNT `reading` events and prints
one JSON line per event: {"id": ..., "sensor_id": ..., "vehicle_count": ...}.
"""
import json
import sys

import requests
import sseclient

url, key, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
headers = {"Accept": "text/event-stream"}
if len(sys.argv) > 4:
    headers["Last-Event-ID"] = sys.argv[4]
response = requests.get(url, params={"key": key}, headers=headers, stream=True, timeout=20)
response.raise_for_status()
client = sseclient.SSEClient(response)
seen = 0
for event in client.events():
    if event.event != "reading":
        continue
    reading = json.loads(event.data)
    assert reading["id"] == event.id, (reading, event.id)
    print(json.dumps({
        "id": event.id,
        "sensor_id": reading["sensor_id"],
        "vehicle_count": reading["fields"]["vehicle_count"],
    }), flush=True)
    seen += 1
    if seen == count:
        break
response.close()
