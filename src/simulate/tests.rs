use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::city::{City, traffic_level};
use super::send::rejected_in;
use super::*;
use crate::config::{Config, DEFAULT_CONFIG};
use crate::model::now_micros;
use crate::pipeline::decode::Format;
use crate::pipeline::{Batch, check};

/// Every format the simulator writes decodes and validates against the shipped schemas.
#[test]
fn simulated_bodies_are_valid_for_the_shipped_datasets() {
    let config = Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut city = City::new(7, 0, 1);
    for ds_config in &config.datasets {
        let ds = ds_config.build();
        for (sim, format) in [
            (SimFormat::Json, Format::Json),
            (SimFormat::Ndjson, Format::Ndjson),
            (SimFormat::Senml, Format::Senml),
            (SimFormat::Line, Format::LineProtocol),
        ] {
            let mut body = String::new();
            city.batch(&ds.id, 20, sim, &mut rng, &mut body);
            let batch = Batch {
                format,
                body: body.clone().into(),
                precision: None,
                received_at: now_micros(),
                sensor: None,
            };
            let (accepted, rejected) = check(&ds, &batch, usize::MAX).unwrap();
            assert!(
                rejected.is_empty(),
                "{} {sim:?}: {rejected:?}\n{body}",
                ds.id
            );
            assert_eq!(accepted.len(), 20, "{} {sim:?}", ds.id);
        }
    }
}

#[test]
fn mqtt_urls_and_reason_strings() {
    assert_eq!(
        parse_mqtt_url("mqtt://127.0.0.1:1883").unwrap(),
        ("127.0.0.1".into(), 1883)
    );
    assert_eq!(
        parse_mqtt_url("mqtt://broker").unwrap(),
        ("broker".into(), 1883)
    );
    assert!(parse_mqtt_url("http://x").is_err());
    assert!(parse_mqtt_url("mqtt://x:port").is_err());
    assert_eq!(rejected_in(Some("2 of 100 readings rejected: #1 …")), 2);
    assert_eq!(rejected_in(None), 0);
}

#[test]
fn traffic_peaks_in_rush_hour() {
    assert!(traffic_level(8.0) > 0.8);
    assert!(traffic_level(17.0) > 0.8);
    assert!(traffic_level(3.0) < 0.2);
}

#[test]
fn workers_share_the_sensors_out_each_sensor_to_one() {
    let mut seen = Vec::new();
    for worker in 0..4 {
        seen.extend(City::new(50, worker, 4).owned);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..50).collect::<Vec<_>>());
}
