"""Subscribes to citygate with paho-mqtt (MQTT 5) and reports the SUBACK and the readings.

Usage: paho_subscribe.py HOST PORT KEY COUNT FILTER [FILTER ...]
Prints "ready" once the SUBACK is in (the caller then publishes), then one JSON object:
{"suback": [code per filter], "messages": [[topic, vehicle_count, retain], ...]}
after COUNT messages, or after 10 s of waiting.
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, key, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
filters = sys.argv[5:]
result = {"suback": None, "messages": []}
subscribed, done = threading.Event(), threading.Event()


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe([(f, 1) for f in filters])


def on_subscribe(client, userdata, mid, reason_codes, properties):
    result["suback"] = [rc.value for rc in reason_codes]
    subscribed.set()


def on_message(client, userdata, message):
    reading = json.loads(message.payload)
    result["messages"].append(
        [message.topic, reading["fields"].get("vehicle_count"), bool(message.retain)]
    )
    if len(result["messages"]) >= count:
        done.set()


client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-subscriber", protocol=mqtt.MQTTv5)
client.username_pw_set("subscriber", key)
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
client.connect(host, port)
client.loop_start()
if not subscribed.wait(10):
    sys.exit("no SUBACK")
print("ready", flush=True)
done.wait(10)
client.disconnect()
client.loop_stop()
print(json.dumps(result), flush=True)
