//! Publish topics and payload formats.
//!
//! - `citygate/{dataset}/{sensor_id}`: one reading (JSON object) or an array of readings of
//!   that sensor; the topic names the sensor, so the payload need not.
//! - `citygate/{dataset}`: a batch: a JSON array, NDJSON, SenML or line protocol, told by the
//!   MQTT 5 content type when there is one, else by the payload itself.

use crate::model::is_valid_sensor_id;
use crate::pipeline::decode::{Format, media_essence};

pub(super) const PREFIX: &str = "citygate/";

/// Why a PUBLISH topic is not a topic at all (a protocol error: the client is disconnected).
pub(super) fn malformed(topic: &[u8]) -> Option<&'static str> {
    if topic.is_empty() {
        return Some("empty topic (topic aliases are not supported)");
    }
    let Ok(text) = std::str::from_utf8(topic) else {
        return Some("topic is not UTF-8");
    };
    if text.contains(['+', '#']) {
        return Some("wildcard in a PUBLISH topic");
    }
    if text.contains('\0') {
        return Some("NUL in topic");
    }
    None
}

/// Where a publish goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Route<'t> {
    pub dataset: &'t str,
    pub sensor: Option<&'t str>,
}

/// The dataset (and sensor) a well-formed topic names, or why it names none.
pub(super) fn route(topic: &str) -> Result<Route<'_>, String> {
    let rest = topic
        .strip_prefix(PREFIX)
        .ok_or_else(|| format!("topic `{topic}` is not under `{PREFIX}`"))?;
    let mut levels = rest.split('/');
    let dataset = levels.next().unwrap_or_default();
    if dataset.is_empty() {
        return Err(format!("topic `{topic}` names no dataset"));
    }
    let sensor = levels.next();
    if levels.next().is_some() {
        return Err(format!(
            "topic `{topic}` is too deep: use citygate/{{dataset}} or citygate/{{dataset}}/{{sensor_id}}"
        ));
    }
    if let Some(sensor) = sensor
        && !is_valid_sensor_id(sensor)
    {
        return Err(format!(
            "`{sensor}` in topic `{topic}` is not a sensor id (1-64 of A-Z a-z 0-9 . _ -)"
        ));
    }
    Ok(Route { dataset, sensor })
}

/// The format of a payload: the MQTT 5 content type when given and known, else a look at
/// the payload (`[` array, `{` object or NDJSON, a letter line protocol). An array whose first
/// record uses only SenML labels is SenML.
pub(crate) fn format_of(payload: &[u8], content_type: Option<&str>, single_sensor: bool) -> Format {
    if let Some(ct) = content_type {
        let essence = media_essence(ct);
        match essence.as_str() {
            "application/json" => return Format::Json,
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                return Format::Ndjson;
            }
            "application/senml+json" => return Format::Senml,
            "text/plain" => return Format::LineProtocol,
            _ => {}
        }
    }
    if single_sensor {
        return Format::Json;
    }
    let text = payload.trim_ascii_start();
    match text.first() {
        Some(b'[') if looks_like_senml(text) => Format::Senml,
        Some(b'{') if is_ndjson(text) => Format::Ndjson,
        Some(c) if c.is_ascii_alphabetic() => Format::LineProtocol,
        _ => Format::Json,
    }
}

/// Whether a `{` payload holds more than one line with an object.
fn is_ndjson(text: &[u8]) -> bool {
    text.split(|&b| b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
        .nth(1)
        .is_some()
}

const SENML_LABELS: [&str; 15] = [
    "bn", "bt", "bu", "bv", "bs", "bver", "n", "u", "v", "vs", "vb", "vd", "s", "t", "ut",
];

/// Whether the first element of a JSON array is an object with only SenML labels. Only
/// that element is read, keys only.
fn looks_like_senml(text: &[u8]) -> bool {
    let Some(body) = text.strip_prefix(b"[") else {
        return false;
    };
    let mut stream = serde_json::Deserializer::from_slice(body).into_iter::<SenmlShaped>();
    matches!(stream.next(), Some(Ok(SenmlShaped(true))))
}

/// A JSON value that is an object whose keys are all SenML labels.
struct SenmlShaped(bool);

impl<'de> serde::Deserialize<'de> for SenmlShaped {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = SenmlShaped;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SenmlShaped, A::Error> {
                let mut any = false;
                let mut all = true;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    any = true;
                    all &= SENML_LABELS.contains(&key.as_ref());
                }
                Ok(SenmlShaped(any && all))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<SenmlShaped, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(SenmlShaped(false))
            }
            fn visit_bool<E>(self, _: bool) -> Result<SenmlShaped, E> {
                Ok(SenmlShaped(false))
            }
            fn visit_i64<E>(self, _: i64) -> Result<SenmlShaped, E> {
                Ok(SenmlShaped(false))
            }
            fn visit_u64<E>(self, _: u64) -> Result<SenmlShaped, E> {
                Ok(SenmlShaped(false))
            }
            fn visit_f64<E>(self, _: f64) -> Result<SenmlShaped, E> {
                Ok(SenmlShaped(false))
            }
            fn visit_str<E>(self, _: &str) -> Result<SenmlShaped, E> {
                Ok(SenmlShaped(false))
            }
            fn visit_unit<E>(self) -> Result<SenmlShaped, E> {
                Ok(SenmlShaped(false))
            }
        }
        d.deserialize_any(Keys)
    }
}

/// What a SUBSCRIBE topic filter follows: one dataset, all its sensors or one.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Follow<'t> {
    pub dataset: &'t str,
    pub sensor: Option<&'t str>,
}

/// The dataset (and sensor) a subscriber's topic filter follows, or `None` when the filter
/// is not one citygate grants: it must name one dataset literally, as
/// `citygate/{dataset}/#`, `citygate/{dataset}/+` or `citygate/{dataset}/{sensor_id}`.
/// Filters that could match several datasets (`#`, `+/…`, `citygate/#`, `citygate/+/…`),
/// shared subscriptions (`$share/…`) and system topics (`$SYS/…`) are never granted: the
/// set of datasets changes while a subscription lives.
pub(super) fn follow(filter: &str) -> Option<Follow<'_>> {
    let rest = filter.strip_prefix(PREFIX)?;
    let (dataset, sensor) = rest.split_once('/')?;
    if dataset.is_empty() || dataset.contains(['+', '#']) {
        return None;
    }
    match sensor {
        "#" | "+" => Some(Follow {
            dataset,
            sensor: None,
        }),
        s if is_valid_sensor_id(s) => Some(Follow {
            dataset,
            sensor: Some(s),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            route("citygate/weather/wx-1"),
            Ok(Route {
                dataset: "weather",
                sensor: Some("wx-1")
            })
        );
        assert_eq!(
            route("citygate/weather"),
            Ok(Route {
                dataset: "weather",
                sensor: None
            })
        );
        assert!(route("other/weather").is_err());
        assert!(route("citygate/").is_err());
        assert!(route("citygate/weather/wx-1/extra").is_err());
        assert!(route("citygate/weather/bad id").is_err());
    }

    #[test]
    fn malformed_topics() {
        assert!(malformed(b"").is_some());
        assert!(malformed(b"citygate/+/x").is_some());
        assert!(malformed(b"citygate/#").is_some());
        assert!(malformed(b"a\0b").is_some());
        assert!(malformed(&[0xff, 0xfe]).is_some());
        assert_eq!(malformed(b"citygate/weather"), None);
    }

    #[test]
    fn formats() {
        assert_eq!(format_of(br#"{"a":1}"#, None, false), Format::Json);
        assert_eq!(
            format_of(b"{\"a\":1}\n{\"a\":2}\n", None, false),
            Format::Ndjson
        );
        assert_eq!(
            format_of(br#"[{"sensor_id":"x"}]"#, None, false),
            Format::Json
        );
        assert_eq!(
            format_of(br#" [{"bn":"x:","n":"t","v":1}]"#, None, false),
            Format::Senml
        );
        assert_eq!(
            format_of(b"m,sensor=a f=1", None, false),
            Format::LineProtocol
        );
        assert_eq!(
            format_of(b"[]", Some("application/senml+json"), false),
            Format::Senml
        );
        assert_eq!(
            format_of(b"{}", Some("application/x-ndjson"), false),
            Format::Ndjson
        );
        assert_eq!(format_of(br#"[{"bn":"x"}]"#, None, true), Format::Json);
    }

    #[test]
    fn subscription_filters_name_one_dataset() {
        assert_eq!(
            follow("citygate/traffic-counts/#"),
            Some(Follow {
                dataset: "traffic-counts",
                sensor: None
            })
        );
        assert_eq!(
            follow("citygate/traffic-counts/+"),
            Some(Follow {
                dataset: "traffic-counts",
                sensor: None
            })
        );
        assert_eq!(
            follow("citygate/traffic-counts/tc-1"),
            Some(Follow {
                dataset: "traffic-counts",
                sensor: Some("tc-1")
            })
        );
        for refused in [
            "#",
            "+/#",
            "citygate/#",
            "citygate/+/x",
            "citygate/+/#",
            "$share/g/citygate/weather/#",
            "$SYS/#",
            "citygate/weather",
            "citygate/weather/a/b",
            "citygate/weather/a+",
            "citygate//#",
            "Citygate/weather/#",
        ] {
            assert_eq!(follow(refused), None, "{refused}");
        }
    }
}
