"""Publishes to citygate with paho-mqtt as an MQTT 5 client and reports each PUBACK.

Usage: paho_publish.py HOST PORT KEY
Prints a JSON object: {"connack": code, "acks": {"good": [code, reason string], "bad": [...]}}
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

host, port, key = sys.argv[1], int(sys.argv[2]), sys.argv[3]
acks, names, done = {}, {}, threading.Event()
connected = threading.Event()
result = {}


def on_connect(client, userdata, flags, reason_code, properties):
    result["connack"] = reason_code.value
    connected.set()


def on_publish(client, userdata, mid, reason_code, properties):
    reason_string = getattr(properties, "ReasonString", None) if properties else None
    acks[names[mid]] = [reason_code.value, reason_string]
    if len(acks) == len(names):
        done.set()


client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-device", protocol=mqtt.MQTTv5)
client.username_pw_set("device", key)
client.on_connect = on_connect
client.on_publish = on_publish
client.connect(host, port)
client.loop_start()
if not connected.wait(10):
    sys.exit("no CONNACK")

publishes = {
    "good": ("citygate/traffic-counts/paho-1", '{"vehicle_count": 12, "mean_speed": 40.5}'),
    "bad": ("citygate/traffic-counts/paho-2", '{"vehicle_count": "lots"}'),
    "batch": ("citygate/traffic-counts", '[{"sensor_id": "paho-3", "vehicle_count": 1}]'),
}
for name, (topic, payload) in publishes.items():
    info = client.publish(topic, payload, qos=1)
    names[info.mid] = name
done.wait(10)
client.disconnect()
client.loop_stop()
result["acks"] = acks
print(json.dumps(result))
