//! Any text as an RFC 3339 timestamp: no panic, and what parses prints back to the same
//! instant.
#![no_main]

use citygate::pipeline::decode::parse_rfc3339;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(micros) = parse_rfc3339(text) {
        // Whatever it accepted is an instant that prints and parses back to itself.
        let secs = micros.div_euclid(1_000_000);
        let sub = micros.rem_euclid(1_000_000);
        // (A leap second on the last day of 9999 lands in year 10000, which RFC 3339 cannot
        // write: such instants are only checked not to panic.)
        if let Some(t) = chrono::DateTime::from_timestamp(secs, sub as u32 * 1000)
            && t.timestamp() < 253_402_300_800
        {
            let printed = t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            assert_eq!(
                parse_rfc3339(&printed),
                Some(micros),
                "{text:?} -> {printed}"
            );
        }
    }
});
