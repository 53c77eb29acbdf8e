//! What the decoder targets share: the shipped datasets, and the properties every decoded
//! body must keep whatever its bytes.
#![allow(dead_code)]

use std::sync::OnceLock;

use bytes::Bytes;
use citygate::config::{Config, DEFAULT_CONFIG};
use citygate::model::{Dataset, Micros};
use citygate::pipeline::decode::Format;
use citygate::pipeline::validate::validate;
use citygate::pipeline::{Batch, check};
use citygate::wal::record;

/// A fixed "now", so a run is reproducible.
pub const NOW: Micros = 1_795_680_900_000_000;
/// Readings a body may hold here (the pipeline's cap; small, so the cap is exercised).
pub const MAX: usize = 64;

pub fn datasets() -> &'static [Dataset] {
    static DATASETS: OnceLock<Vec<Dataset>> = OnceLock::new();
    DATASETS.get_or_init(|| {
        let config = Config::from_toml(DEFAULT_CONFIG, "default", &[]).expect("shipped config");
        config.datasets.iter().map(|d| d.build()).collect()
    })
}

/// Decodes `data` as `format` for every shipped dataset, with and without a sensor named by
/// the transport, and checks what comes out:
/// - no more than [`MAX`] readings, accepted and rejected together;
/// - every accepted reading passes validation on its own;
/// - the accepted readings survive the write-ahead log's encoding unchanged.
pub fn decode(format: Format, data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    for ds in datasets() {
        for sensor in [None, Some("tc-0001")] {
            let batch = Batch {
                format,
                body: body.clone(),
                precision: None,
                received_at: NOW,
                sensor: sensor.map(Into::into),
            };
            let Ok((accepted, rejected)) = check(ds, &batch, MAX) else {
                continue;
            };
            assert!(accepted.len() + rejected.len() <= MAX);
            for r in &accepted {
                if let Err(e) = validate(r, ds, NOW) {
                    panic!("an accepted reading fails validation: {e:?}\n{r:?}");
                }
            }
            if accepted.is_empty() {
                continue;
            }
            let mut frame = record::encode(ds, &accepted, NOW);
            record::seal(&mut frame, 1);
            let payload = &frame[record::FRAME_HEADER..];
            let mut back = Vec::new();
            let dropped = record::decode_into(payload, ds, &mut back).expect("our own record");
            assert_eq!(dropped, 0);
            assert_eq!(back, accepted, "the log changes what it keeps");
        }
    }
}
