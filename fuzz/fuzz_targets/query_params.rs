//! Any text as the query parameters clients send: live-feed filters (`sensors`, `bbox`) and
//! `precision`. No panic; a filter that parses is one a reading can be matched against.
#![no_main]

use citygate::feed::session::Filter;
use citygate::pipeline::decode::Precision;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (sensors, bbox) = text.split_once('&').unwrap_or((text, ""));
    let _ = Filter::parse(Some(sensors), None);
    let _ = Filter::parse(None, Some(bbox));
    let _ = Filter::parse(Some(sensors), Some(bbox));
    let _ = Precision::parse(text);
});
