//! Any bytes as a ndjson body: no panic, and what is accepted is valid and kept as it is.
#![no_main]

use citygate::pipeline::decode::Format;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| common::decode(Format::Ndjson, data));
