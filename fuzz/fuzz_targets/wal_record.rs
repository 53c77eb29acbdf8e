//! Any bytes as a log segment and as a record payload: recovery scanning, salvage and
//! decoding never panic, and salvage keeps only frames a scan would accept.
#![no_main]

use citygate::wal::{record, segment};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let scan = segment::scan(data, 0);
    assert!(scan.valid_end as usize <= data.len());
    let (kept, last, skipped) = segment::salvage(data, 0);
    assert_eq!(kept.len() + skipped as usize, data.len());
    assert!(last >= scan.last_lsn);
    // What salvage keeps is a clean segment.
    let rescan = segment::scan(&kept, 0);
    assert_eq!(rescan.damage, None);
    assert_eq!(rescan.last_lsn, last);

    let _ = record::header(data);
    for ds in common::datasets() {
        let mut out = Vec::new();
        let _ = record::decode_into(data, ds, &mut out);
    }
});
