#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/: the bodies, timestamps, log frames and MQTT
packets the tests send, one file each. Run from fuzz/ after changing a format."""
import os
import struct

import zlib  # noqa: F401  (crc32c is not in the standard library; frames carry crc 0)


def w(target, name, data):
    d = f"corpus/{target}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/{name}", "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


w("decode_json", "single", '{"sensor_id": "tc-0042", "ts": "2026-11-26T08:15:00Z", "lat": 55.68, "lon": 12.57, "seq": 17, "fields": {"vehicle_count": 31, "mean_speed": 42.5}}')
w("decode_json", "flat_array", '[{"sensor_id":"tc-1","ts":1795680900000,"vehicle_count":31},{"sensor_id":"tc-2","vehicle_count":-1},{"sensor":"x","time":"2026-11-26T08:15:00.123+01:00","mean_speed":"fast"},1,null,[]]')
w("decode_json", "weather", '[{"sensor_id":"wx-1","temperature":4.5,"humidity":81,"wind_speed":7.2,"note":"dup","temperature":3}]')
w("decode_json", "nested", '{"sensor_id":"a","fields":{"vehicle_count":1e3,"x":{"y":[1,2,{"z":null}]}}}')
w("decode_ndjson", "lines", '{"sensor_id":"aq-1","pm2_5":8.5,"pm10":14.0,"no2":21.0}\n{"sensor_id":"aq-2","pm2_5":"high"}\n\nnot json\n{"sensor_id":"aq-3","ts":"2026-11-26T08:15:00Z","pm10":3}\r\n')
w("decode_senml", "pack", '[{"bn":"wx-0001","bt":1795680900,"n":"temperature","u":"Cel","v":4.5},{"n":"humidity","u":"%RH","v":81},{"n":"wind_speed","u":"m/s","v":7.2,"t":60},{"bn":"wx-0002","n":"temperature","vs":"x"},{"n":"temperature","vb":true,"bver":10}]')
w("decode_senml", "base", '[{"bn":"em-1","bu":"kWh","bv":100,"n":"energy","v":1.5},{"n":"energy","s":2}]')
w("decode_line_protocol", "lines", 'traffic,sensor=tc-0042,host=gw1 vehicle_count=31i,mean_speed=42.5 1795680900000000000\n# comment\ntraffic,sensor_id=tc\\ 1 vehicle_count=1i,lat=55.6,lon=12.5,seq=3i\nbroken line\nweather,sensor=wx temperature=4.5,note="say \\"hi\\"",ok=true 1795680900\n')
for i, t in enumerate(["2026-11-26T08:15:00Z", "2026-11-26T08:15:00.123456+01:00", "2026-11-26t08:15:00z",
                       "1970-01-01T00:00:00-23:59", "9999-12-31T23:59:60.999999999Z", "2026-02-29T00:00:00Z"]):
    w("rfc3339", f"t{i}", t)
w("query_params", "filters", "tc-1,tc-2&12.4,55.6,12.7,55.8")
w("query_params", "precision", "ns")
w("query_params", "bad", "&1,2,nan,inf")


def frame(lsn, body):
    payload = struct.pack("<Q", lsn) + body
    return struct.pack("<II", len(payload), 0) + payload


w("wal_record", "frames", frame(1, b"\x00" * 8 + b"\x0etraffic-counts\x01\x01\x0dvehicle_count\x01\x00\x00\x00\x00\x04tc-1"
                                + b"\x00" * 16 + b"\x01" + b"\x01" + b"\x00" * 7))


def s(b):
    return struct.pack(">H", len(b)) + b


def pkt(first, body):
    out = bytes([first])
    n = len(body)
    while True:
        byte = n % 128
        n //= 128
        if n:
            byte |= 0x80
        out += bytes([byte])
        if not n:
            break
    return out + body


# mqtt_session: the first byte picks the version (bit 0: 5) and the key (bit 1: admin).
pub1 = pkt(0x32, s(b"citygate/traffic-counts/tc-1") + struct.pack(">H", 1) + b'{"vehicle_count":3}')
pub0 = pkt(0x30, s(b"citygate/traffic-counts") + b'[{"sensor_id":"a","vehicle_count":1}]')
pub2 = pkt(0x34, s(b"citygate/weather/wx-1") + struct.pack(">H", 2) + b'{"temperature":1}')
rel = pkt(0x62, struct.pack(">H", 2))
ping = pkt(0xC0, b"")
disc = pkt(0xE0, b"")
sub = pkt(0x82, struct.pack(">H", 3) + s(b"citygate/traffic-counts/#") + b"\x01")
w("mqtt_session", "v4_device", b"\x00" + pub1 + pub0 + pub2 + rel + ping + disc)
pub1v5 = pkt(0x32, s(b"citygate/traffic-counts/tc-1") + struct.pack(">H", 1) + b"\x00" + b'{"vehicle_count":3}')
w("mqtt_session", "v5_device", b"\x01" + pub1v5 + pkt(0xE0, b"\x00\x00"))
w("mqtt_session", "v4_subscriber", b"\x02" + sub + ping + pkt(0xA2, struct.pack(">H", 4) + s(b"citygate/traffic-counts/#")))
subv5 = pkt(0x82, struct.pack(">H", 3) + b"\x00" + s(b"citygate/weather/+") + b"\x01")
w("mqtt_session", "v5_subscriber", b"\x03" + subv5)
