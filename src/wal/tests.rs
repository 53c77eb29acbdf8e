use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::config::{ByteSize, FsyncMode};
use crate::model::{Dataset, Reading, Value};
use crate::pipeline::decode::tests::{reading, traffic};

fn config(fsync: FsyncMode, segment_bytes: u64, max_bytes: u64) -> WalConfig {
    WalConfig {
        fsync,
        fsync_interval: Duration::from_millis(10),
        segment_bytes: ByteSize(segment_bytes),
        max_bytes: ByteSize(max_bytes),
        queue_depth: 1024,
    }
}

fn open(dir: &Path, c: &WalConfig) -> Result<Wal, WalError> {
    Wal::open(dir, c, Duration::from_secs(5), WalMetrics::default(), false)
}

/// `n` traffic readings of sensor `s-{tag}` whose counts start at `tag`.
fn readings(ds: &Dataset, tag: i64, n: usize) -> Vec<Reading> {
    (0..n)
        .map(|i| {
            reading(ds, 1_795_680_900_000_000, |r| {
                r.values[0] = Some(Value::Int(tag + i as i64));
                r.sensor_id = format!("s-{tag}").into();
            })
        })
        .collect()
}

/// A record of `n` traffic readings whose counts start at `tag`.
fn frame(tag: i64, n: usize) -> Vec<u8> {
    let ds = traffic();
    record::encode(&ds, &readings(&ds, tag, n), 0)
}

/// Every record readable after `after`, as (lsn, first count).
fn read_all(dir: &Path, after: u64, committed: u64) -> Vec<(u64, i64)> {
    let ds = traffic();
    let mut reader = Reader::new(dir, after);
    let mut out = Vec::new();
    while let Some(payload) = reader.next(committed).unwrap() {
        let header = record::header(&payload).unwrap();
        let mut readings = Vec::new();
        record::decode_into(&payload, &ds, &mut readings).unwrap();
        let first = match readings[0].values[0] {
            Some(Value::Int(v)) => v,
            _ => -1,
        };
        out.push((header.lsn, first));
    }
    out
}

async fn close(wal: Wal) {
    tokio::task::spawn_blocking(move || wal.close())
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_appends_get_rising_lsns_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path(), &config(FsyncMode::Always, 64 << 20, 1 << 30)).unwrap();
    let mut tasks = Vec::new();
    for t in 0..50i64 {
        let wal = wal.clone();
        tasks.push(tokio::spawn(async move {
            (t, wal.append(frame(t * 1000, 3)).await.unwrap())
        }));
    }
    let mut lsns = Vec::new();
    for task in tasks {
        lsns.push(task.await.unwrap());
    }
    let mut seen: Vec<u64> = lsns.iter().map(|(_, l)| *l).collect();
    seen.sort();
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    assert_eq!(wal.committed_lsn(), 50);
    let read = read_all(dir.path(), 0, wal.committed_lsn());
    assert_eq!(read.len(), 50);
    for (tag, lsn) in lsns {
        assert!(read.contains(&(lsn, tag * 1000)), "{lsn} carries {tag}");
    }
    assert!(wal.metrics().fsyncs() <= 50, "group commit shares fsyncs");
    close(wal).await;
}

#[tokio::test]
async fn segments_roll_and_are_released_once_every_consumer_passed() {
    let dir = tempfile::tempdir().unwrap();
    let size = frame(0, 10).len() as u64;
    let wal = open(dir.path(), &config(FsyncMode::Never, size * 3, 1 << 30)).unwrap();
    wal.register("a").unwrap();
    wal.register("b").unwrap();
    for i in 0..10 {
        wal.append(frame(i, 10)).await.unwrap();
    }
    let count = || segment::list(dir.path()).unwrap().len();
    assert_eq!(count(), 4, "three records per segment");
    wal.checkpoint(
        "a",
        Checkpoint {
            lsn: 10,
            intent: None,
        },
    )
    .unwrap();
    assert_eq!(count(), 4, "b has not read anything yet");
    wal.checkpoint(
        "b",
        Checkpoint {
            lsn: 6,
            intent: None,
        },
    )
    .unwrap();
    assert_eq!(count(), 2, "segments 1-3 and 4-6 released");
    assert_eq!(read_all(dir.path(), 6, 10).len(), 4);
    wal.checkpoint(
        "b",
        Checkpoint {
            lsn: 10,
            intent: None,
        },
    )
    .unwrap();
    assert_eq!(count(), 1, "the active segment stays");
    close(wal).await;
    // LSNs go on after a restart with only the active segment left.
    let wal = open(dir.path(), &config(FsyncMode::Never, size * 3, 1 << 30)).unwrap();
    assert_eq!(wal.append(frame(99, 1)).await.unwrap(), 11);
    close(wal).await;
}

#[tokio::test]
async fn a_full_log_refuses_until_a_sink_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let size = frame(0, 10).len() as u64;
    let wal = open(dir.path(), &config(FsyncMode::Always, size * 2, size * 4)).unwrap();
    wal.register("stuck").unwrap();
    for i in 0..4 {
        wal.append(frame(i, 10)).await.unwrap();
    }
    assert_eq!(
        wal.append(frame(4, 10)).await,
        Err(WalError::Full {
            max_bytes: size * 4
        })
    );
    assert_eq!(
        read_all(dir.path(), 0, wal.committed_lsn()).len(),
        4,
        "nothing refused was written"
    );
    wal.checkpoint(
        "stuck",
        Checkpoint {
            lsn: 2,
            intent: None,
        },
    )
    .unwrap();
    assert_eq!(wal.append(frame(5, 10)).await, Ok(5));
    close(wal).await;
}

#[tokio::test]
async fn corruption_in_the_middle_refuses_start_unless_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(FsyncMode::Always, 64 << 20, 1 << 30);
    let wal = open(dir.path(), &c).unwrap();
    for i in 0..5 {
        wal.append(frame(i * 10, 2)).await.unwrap();
    }
    close(wal).await;
    let (_, path) = segment::list(dir.path()).unwrap().remove(0);
    let mut bytes = fs::read(&path).unwrap();
    let one = frame(0, 2).len();
    bytes[one + 20] ^= 0xff; // inside record 2
    fs::write(&path, &bytes).unwrap();

    let err = open(dir.path(), &c).expect_err("start refused");
    match &err {
        WalError::Corrupt { offset, .. } => assert_eq!(*offset, one as u64),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("--skip-corrupt-wal"));
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "nothing changed without the flag"
    );

    let wal = Wal::open(
        dir.path(),
        &c,
        Duration::from_secs(5),
        WalMetrics::default(),
        true,
    )
    .unwrap();
    let read = read_all(dir.path(), 0, wal.committed_lsn());
    assert_eq!(read, vec![(1, 0), (3, 20), (4, 30), (5, 40)]);
    assert_eq!(wal.append(frame(50, 1)).await, Ok(6));
    close(wal).await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Crash anywhere: cut the log at any byte. Recovery keeps exactly the records that were
    /// whole before the cut, and appending goes on after the last of them.
    #[test]
    fn recovery_keeps_exactly_the_whole_records(
        sizes in proptest::collection::vec(1usize..30, 1..25),
        cut_at in any::<proptest::sample::Index>(),
        segment_records in 2u64..8,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let c = config(FsyncMode::Never, frame(0, 10).len() as u64 * segment_records, 1 << 30);
            let wal = open(dir.path(), &c).unwrap();
            let mut ends = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                let lsn = wal.append(frame(i as i64 * 100, *n)).await.unwrap();
                ends.push(lsn);
            }
            close(wal).await;

            // Cut the last segment somewhere.
            let segments = segment::list(dir.path()).unwrap();
            let (first, path) = segments.last().unwrap().clone();
            let bytes = fs::read(&path).unwrap();
            let cut = if bytes.is_empty() { 0 } else { cut_at.index(bytes.len() + 1) };
            fs::write(&path, &bytes[..cut]).unwrap();
            // The records wholly before the cut in that segment.
            let whole_in_last = segment::scan(&bytes[..cut], first - 1).records;
            let expected = (first - 1) + whole_in_last;

            let wal = open(dir.path(), &c).unwrap();
            prop_assert_eq!(wal.committed_lsn(), expected);
            let read = read_all(dir.path(), 0, wal.committed_lsn());
            prop_assert_eq!(read.len() as u64, expected);
            for (lsn, first_count) in &read {
                prop_assert_eq!(*first_count, (*lsn as i64 - 1) * 100);
            }
            prop_assert_eq!(wal.append(frame(7, 1)).await.unwrap(), expected + 1);
            close(wal).await;
            Ok(())
        })?;
    }
}

/// A record of `n` readings as intake appends it: the bytes and the decoded readings.
fn decoded(tag: i64, n: usize) -> (Vec<u8>, Decoded) {
    let ds = Arc::new(traffic());
    let readings = readings(&ds, tag, n);
    let frame = record::encode(&ds, &readings, 7);
    let bytes = readings.iter().map(Reading::approx_size).sum();
    let decoded = Decoded {
        appended_at: 7,
        accepted: Default::default(),
        dataset: ds,
        readings: Arc::new(readings),
        bytes,
    };
    (frame, decoded)
}

/// What a consumer hands out: (lsn, first count, from memory).
fn consume(consumer: &mut Consumer, upto: u64) -> Vec<(u64, i64, bool)> {
    let ds = traffic();
    let mut out = Vec::new();
    consumer
        .read(upto, |record| {
            let (lsn, readings, memory) = match record {
                Record::Memory(c) => (c.lsn, c.readings.to_vec(), true),
                Record::Disk { lsn, payload } => {
                    let mut readings = Vec::new();
                    record::decode_into(payload, &ds, &mut readings).unwrap();
                    (lsn, readings, false)
                }
            };
            let first = match readings[0].values[0] {
                Some(Value::Int(v)) => v,
                _ => -1,
            };
            out.push((lsn, first, memory));
            true
        })
        .unwrap();
    out
}

/// A consumer reads every record once, in order: from disk what the tail does not hold
/// (records of an earlier run, a record appended as bytes only), from memory the rest, and
/// it goes back to memory after reading the disk (also after a restart, when the tail
/// starts empty).
#[tokio::test]
async fn a_consumer_reads_every_record_once_from_memory_or_disk() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(FsyncMode::Always, 1 << 20, 1 << 30);
    let wal = open(dir.path(), &c).unwrap();
    for tag in [10, 20] {
        wal.append(frame(tag, 2)).await.unwrap();
    }
    close(wal).await;

    // A restart: records 1 and 2 are only on disk.
    let wal = open(dir.path(), &c).unwrap();
    let mut consumer = wal.consumer(0);
    assert_eq!(consume(&mut consumer, wal.committed_lsn()).len(), 2);
    for tag in [30, 40] {
        let (frame, d) = decoded(tag, 3);
        wal.append_decoded(frame, d).await.unwrap();
    }
    assert_eq!(
        consume(&mut consumer, wal.committed_lsn()),
        vec![(3, 30, true), (4, 40, true)]
    );
    // Bytes only: the tail starts over after it.
    wal.append(frame(50, 1)).await.unwrap();
    for tag in [60, 70] {
        let (frame, d) = decoded(tag, 1);
        wal.append_decoded(frame, d).await.unwrap();
    }
    let committed = wal.committed_lsn();
    assert_eq!(committed, 7);
    assert_eq!(
        consume(&mut consumer, committed),
        vec![(5, 50, false), (6, 60, true), (7, 70, true)]
    );
    // A consumer from the start: disk, then memory, never a record twice.
    let mut fresh = wal.consumer(0);
    let lsns: Vec<u64> = consume(&mut fresh, committed).iter().map(|r| r.0).collect();
    assert_eq!(lsns, (1..=7).collect::<Vec<_>>());
    assert_eq!(fresh.position(), 7);
    // Caught up: nothing more, and from memory only it says so without the disk.
    assert!(consume(&mut fresh, committed).is_empty());
    assert!(fresh.read_memory(committed, |_| true));
    close(wal).await;
}

/// A reader of a live log reads no byte past a segment's written length, however far its
/// buffer could read ahead: bytes of a write that failed (cut back, never answered) must not
/// come back as a record.
#[tokio::test]
async fn a_bounded_reader_reads_nothing_past_the_written_length() {
    let dir = tempfile::tempdir().unwrap();
    let c = config(FsyncMode::Never, 1 << 20, 1 << 30);
    let wal = open(dir.path(), &c).unwrap();
    let first = frame(10, 2);
    let first_len = first.len() as u64;
    wal.append(first).await.unwrap();
    wal.append(frame(20, 2)).await.unwrap();
    close(wal).await;
    let (segment_first, _) = segment::list(dir.path()).unwrap()[0].clone();
    let lengths: segment::Lengths =
        Arc::new(Mutex::new(BTreeMap::from([(segment_first, first_len)])));
    let mut reader = Reader::bounded(dir.path(), 0, lengths.clone());
    let mut payload = Vec::new();
    assert!(reader.next_into(u64::MAX, &mut payload).unwrap());
    assert_eq!(record::header(&payload).unwrap().lsn, 1);
    assert!(
        !reader.next_into(u64::MAX, &mut payload).unwrap(),
        "the second record is past the written length"
    );
    // Written further: the same reader goes on.
    lengths.lock().unwrap().insert(segment_first, u64::MAX);
    assert!(reader.next_into(u64::MAX, &mut payload).unwrap());
    assert_eq!(record::header(&payload).unwrap().lsn, 2);
}
