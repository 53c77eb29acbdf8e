//! The WAL record: one acknowledged batch of one dataset, in a compact binary encoding.
//!
//! ```text
//! frame    := len:u32le crc32c:u32le payload[len]         (crc32c of the payload)
//! payload  := lsn:u64le appended_at:i64le dataset:str8 fields reading_count:u32le reading*
//! fields   := count:u8 (type:u8 name:str8)*              (the schema the readings were written with)
//! reading  := flags:u8 sensor:str8 ts:i64le received_at:i64le [lat:f64 lon:f64] [seq:i64]
//!             present:bitmap values*                     (values of present fields, in order)
//! value    := f64le | i64le | u8 | str16                 (by the field's type)
//! str8     := len:u8 bytes ; str16 := len:u16le bytes
//! ```
//!
//! Each record names its fields, so a record written before a schema change is read by
//! field name afterwards: a field the schema no longer has is dropped, one it gained is absent.
//! The LSN is written by the WAL writer (the encoder leaves room for it), because only the
//! writer knows the order.

use compact_str::CompactString;
use smallvec::smallvec;

use crate::model::{Dataset, FieldType, Micros, Reading, Value};

/// Bytes before a payload: length and CRC.
pub const FRAME_HEADER: usize = 8;
/// Where the LSN sits in a payload.
const LSN_AT: usize = 0;
/// A payload larger than this is corruption, not data.
pub(crate) const MAX_PAYLOAD: usize = 512 << 20;

const FLAG_TS_MISSING: u8 = 1;
const FLAG_LOCATION: u8 = 2;
const FLAG_SEQ: u8 = 4;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("undecodable WAL record: {0}")]
pub struct RecordError(pub &'static str);

fn type_code(ty: FieldType) -> u8 {
    match ty {
        FieldType::Float => 0,
        FieldType::Int => 1,
        FieldType::Bool => 2,
        FieldType::String => 3,
    }
}

fn code_type(code: u8) -> Option<FieldType> {
    Some(match code {
        0 => FieldType::Float,
        1 => FieldType::Int,
        2 => FieldType::Bool,
        3 => FieldType::String,
        _ => return None,
    })
}

fn put_str8(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

/// Encodes `readings` of `ds` as a framed record (length, CRC left for the writer, LSN 0).
pub fn encode(ds: &Dataset, readings: &[Reading], appended_at: Micros) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + 64 + readings.len() * 64);
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&appended_at.to_le_bytes());
    put_str8(&mut out, &ds.id);
    out.push(ds.fields.len() as u8);
    for f in &ds.fields {
        out.push(type_code(f.ty));
        put_str8(&mut out, &f.name);
    }
    out.extend_from_slice(&(readings.len() as u32).to_le_bytes());
    let bitmap_len = ds.fields.len().div_ceil(8);
    for r in readings {
        let mut flags = 0;
        if r.ts_missing {
            flags |= FLAG_TS_MISSING;
        }
        let location = r.lat.zip(r.lon);
        if location.is_some() {
            flags |= FLAG_LOCATION;
        }
        if r.seq.is_some() {
            flags |= FLAG_SEQ;
        }
        out.push(flags);
        put_str8(&mut out, &r.sensor_id);
        out.extend_from_slice(&r.ts.to_le_bytes());
        out.extend_from_slice(&r.received_at.to_le_bytes());
        if let Some((lat, lon)) = location {
            out.extend_from_slice(&lat.to_le_bytes());
            out.extend_from_slice(&lon.to_le_bytes());
        }
        if let Some(seq) = r.seq {
            out.extend_from_slice(&seq.to_le_bytes());
        }
        let bitmap_at = out.len();
        out.resize(bitmap_at + bitmap_len, 0);
        for (i, value) in r.values.iter().enumerate() {
            let Some(value) = value else { continue };
            out[bitmap_at + i / 8] |= 1 << (i % 8);
            match value {
                Value::Float(f) => out.extend_from_slice(&f.to_le_bytes()),
                Value::Int(v) => out.extend_from_slice(&v.to_le_bytes()),
                Value::Bool(b) => out.push(u8::from(*b)),
                Value::Str(s) => {
                    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
                    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
                    out.extend_from_slice(bytes);
                }
            }
        }
    }
    out
}

/// Stamps the LSN into an encoded record and fills in its length and CRC.
pub fn seal(frame: &mut [u8], lsn: u64) {
    let payload_len = frame.len() - FRAME_HEADER;
    frame[FRAME_HEADER + LSN_AT..FRAME_HEADER + LSN_AT + 8].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32c::crc32c(&frame[FRAME_HEADER..]);
    frame[0..4].copy_from_slice(&(payload_len as u32).to_le_bytes());
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// A cursor over a payload.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(RecordError("length overflow"))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(RecordError("truncated"))?;
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, RecordError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, RecordError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().unwrap_or([0; 2]),
        ))
    }

    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }

    fn i64(&mut self) -> Result<i64, RecordError> {
        Ok(self.u64()? as i64)
    }

    fn f64(&mut self) -> Result<f64, RecordError> {
        Ok(f64::from_bits(self.u64()?))
    }

    fn str8(&mut self) -> Result<&'a str, RecordError> {
        let len = self.u8()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| RecordError("string not UTF-8"))
    }

    fn str16(&mut self) -> Result<&'a str, RecordError> {
        let len = self.u16()? as usize;
        std::str::from_utf8(self.take(len)?).map_err(|_| RecordError("string not UTF-8"))
    }
}

/// The header of a record payload: enough to route it without decoding the readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Header<'a> {
    pub lsn: u64,
    pub appended_at: Micros,
    pub dataset: &'a str,
}

/// Reads a payload's header.
pub fn header(payload: &[u8]) -> Result<Header<'_>, RecordError> {
    let mut c = Cursor {
        bytes: payload,
        at: 0,
    };
    Ok(Header {
        lsn: c.u64()?,
        appended_at: c.i64()?,
        dataset: c.str8()?,
    })
}

/// Decodes a payload's readings into `ds`'s current schema, appending them to `out`.
/// Fields are matched by name; a value whose type changed is converted when exact (int to
/// float, integral float to int) and dropped otherwise. Returns how many values were dropped.
pub fn decode_into(
    payload: &[u8],
    ds: &Dataset,
    out: &mut Vec<Reading>,
) -> Result<usize, RecordError> {
    let mut c = Cursor {
        bytes: payload,
        at: 0,
    };
    c.u64()?;
    c.i64()?;
    c.str8()?;
    let nfields = c.u8()? as usize;
    // Record field j goes to schema slot map[j] (or nowhere), with its written type.
    let mut map: smallvec::SmallVec<[(Option<usize>, FieldType); 8]> = smallvec![];
    for j in 0..nfields {
        let ty = code_type(c.u8()?).ok_or(RecordError("unknown field type"))?;
        let name = c.str8()?;
        let slot = match ds.fields.get(j) {
            Some(f) if f.name == name => Some(j),
            _ => ds.field_index(name),
        };
        map.push((slot, ty));
    }
    let count = c.u32()? as usize;
    let bitmap_len = nfields.div_ceil(8);
    let mut dropped = 0;
    out.reserve(count.min(1 << 20));
    for _ in 0..count {
        let flags = c.u8()?;
        let sensor_id = CompactString::new(c.str8()?);
        let ts = c.i64()?;
        let received_at = c.i64()?;
        let (lat, lon) = if flags & FLAG_LOCATION != 0 {
            (Some(c.f64()?), Some(c.f64()?))
        } else {
            (None, None)
        };
        let seq = if flags & FLAG_SEQ != 0 {
            Some(c.i64()?)
        } else {
            None
        };
        let bitmap = c.take(bitmap_len)?;
        let mut reading = Reading {
            sensor_id,
            ts,
            ts_missing: flags & FLAG_TS_MISSING != 0,
            received_at,
            values: smallvec![None; ds.fields.len()],
            lat,
            lon,
            seq,
        };
        for (j, (slot, ty)) in map.iter().enumerate() {
            if bitmap[j / 8] & (1 << (j % 8)) == 0 {
                continue;
            }
            let value = match ty {
                FieldType::Float => Value::Float(c.f64()?),
                FieldType::Int => Value::Int(c.i64()?),
                FieldType::Bool => Value::Bool(c.u8()? != 0),
                FieldType::String => Value::Str(CompactString::new(c.str16()?)),
            };
            let Some(slot) = *slot else {
                dropped += 1;
                continue;
            };
            match convert(value, ds.fields[slot].ty) {
                Some(v) => reading.values[slot] = Some(v),
                None => dropped += 1,
            }
        }
        out.push(reading);
    }
    if c.at != payload.len() {
        return Err(RecordError("trailing bytes"));
    }
    Ok(dropped)
}

/// A value written under one type, read under the schema's current type.
fn convert(value: Value, to: FieldType) -> Option<Value> {
    match (value, to) {
        (v @ Value::Float(_), FieldType::Float)
        | (v @ Value::Int(_), FieldType::Int)
        | (v @ Value::Bool(_), FieldType::Bool)
        | (v @ Value::Str(_), FieldType::String) => Some(v),
        (Value::Int(i), FieldType::Float) => Some(Value::Float(i as f64)),
        (Value::Float(f), FieldType::Int) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
            Some(Value::Int(f as i64))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::decode::tests::{field, traffic};

    fn sample(ds: &Dataset) -> Vec<Reading> {
        vec![
            Reading {
                sensor_id: "tc-1".into(),
                ts: 1_795_680_900_000_000,
                ts_missing: false,
                received_at: 1_795_680_900_000_123,
                values: smallvec![Some(Value::Int(31)), Some(Value::Float(42.5))],
                lat: Some(55.5),
                lon: Some(12.25),
                seq: Some(7),
            },
            Reading {
                ts_missing: true,
                values: smallvec![Some(Value::Int(-1)), None],
                lat: None,
                lon: None,
                seq: None,
                ..Reading::empty(ds.fields.len(), 5)
            },
        ]
    }

    fn payload(frame: &[u8]) -> &[u8] {
        &frame[FRAME_HEADER..]
    }

    #[test]
    fn round_trips_with_header_and_crc() {
        let ds = traffic();
        let readings = sample(&ds);
        let mut frame = encode(&ds, &readings, 99);
        seal(&mut frame, 42);
        let len = u32::from_le_bytes(frame[0..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - FRAME_HEADER);
        let crc = u32::from_le_bytes(frame[4..8].try_into().unwrap());
        assert_eq!(crc, crc32c::crc32c(payload(&frame)));
        assert_eq!(
            header(payload(&frame)).unwrap(),
            Header {
                lsn: 42,
                appended_at: 99,
                dataset: "traffic-counts"
            }
        );
        let mut out = Vec::new();
        assert_eq!(decode_into(payload(&frame), &ds, &mut out), Ok(0));
        assert_eq!(out, readings);
    }

    #[test]
    fn reads_old_records_by_field_name() {
        let old = traffic();
        let mut frame = encode(&old, &sample(&old), 0);
        seal(&mut frame, 1);
        // The schema gained a field in front and turned vehicle_count into a float.
        let mut new = traffic();
        new.fields
            .insert(0, field("lane", FieldType::String, None, false));
        new.fields[1].ty = FieldType::Float;
        let mut out = Vec::new();
        assert_eq!(decode_into(payload(&frame), &new, &mut out), Ok(0));
        assert_eq!(
            out[0].values.to_vec(),
            vec![None, Some(Value::Float(31.0)), Some(Value::Float(42.5))]
        );
        // A field that is gone is dropped and counted.
        let mut fewer = traffic();
        fewer.fields.truncate(1);
        let mut out = Vec::new();
        assert_eq!(decode_into(payload(&frame), &fewer, &mut out), Ok(1));
        assert_eq!(out[0].values.to_vec(), vec![Some(Value::Int(31))]);
    }

    #[test]
    fn truncated_payloads_are_errors_not_panics() {
        let ds = traffic();
        let mut frame = encode(&ds, &sample(&ds), 0);
        seal(&mut frame, 1);
        let p = payload(&frame);
        for cut in 0..p.len() {
            let mut out = Vec::new();
            assert!(
                decode_into(&p[..cut], &ds, &mut out).is_err(),
                "cut at {cut}"
            );
        }
    }
}
