use super::*;
use crate::model::Value;

fn dataset() -> Arc<Dataset> {
    let config =
        crate::config::Config::from_toml(crate::config::DEFAULT_CONFIG, "default", &[]).unwrap();
    Arc::new(config.datasets[0].build())
}

fn open(ds: &Arc<Dataset>, lsn: u64, ts: &[Micros]) -> Open {
    let readings = ts
        .iter()
        .map(|&t| {
            let mut r = Reading::empty(ds.fields.len(), t);
            r.ts = t;
            r.ts_missing = false;
            r.sensor_id = CompactString::from(format!("s-{lsn}"));
            r.values[0] = Some(Value::Int(lsn as i64));
            r
        })
        .collect();
    Open {
        lsn,
        dataset: ds.clone(),
        readings: Arc::new(readings),
    }
}

fn lsns(rows: &[Row]) -> Vec<i64> {
    rows.iter()
        .map(|r| match r.values[0] {
            Some(Value::Int(i)) => i,
            _ => -1,
        })
        .collect()
}

fn rows_of(
    s: &Snapshot,
    ds: &Dataset,
    from: Micros,
    to: Micros,
    keep: &mut dyn FnMut(Micros, &str) -> bool,
) -> Vec<Row> {
    let mut out = Vec::new();
    s.scan(ds, (from, to), keep, &mut |r| out.push(r));
    out
}

fn snapshot(d: &DatasetHot) -> Snapshot {
    Snapshot {
        lake_through: d.lake_through,
        chunks: d.chunks.iter().cloned().collect(),
        open: d.open.clone(),
        ..Snapshot::default()
    }
}

#[test]
fn sealed_and_open_rows_read_back_alike_in_log_order() {
    let ds = dataset();
    let mut d = DatasetHot::default();
    for lsn in 1..=3 {
        d.take(open(&ds, lsn, &[lsn as i64 * 10, lsn as i64 * 10 + 1]), 0);
    }
    d.seal();
    d.take(open(&ds, 4, &[40]), 0);
    let rows = rows_of(&snapshot(&d), &ds, 0, 1000, &mut |_, _| true);
    assert_eq!(lsns(&rows), [1, 1, 2, 2, 3, 3, 4]);
    assert_eq!(rows[2].sensor_id, "s-2");
    assert_eq!(rows[2].ts, 20);
    let some = rows_of(&snapshot(&d), &ds, 11, 40, &mut |_, s| s != "s-2");
    assert_eq!(lsns(&some), [1, 3, 3]);
}

#[test]
fn a_chunk_leaves_only_for_a_checkpoint_at_or_after_it_and_masks_up_to_that() {
    let ds = dataset();
    let mut d = DatasetHot::default();
    for lsn in 1..=4 {
        d.take(open(&ds, lsn, &[lsn as i64]), 0);
        if lsn % 2 == 0 {
            d.seal();
        }
    }
    // Chunks [1,2] and [3,4]. The sink has written through 1 only: nothing goes.
    assert_eq!(d.tidy(1, Micros::MAX, 0, 0), 0);
    assert_eq!(d.chunks.len(), 2);
    // Through 3: the first chunk goes; the boundary is 3, so row 3 is the lake's now.
    assert!(d.tidy(3, Micros::MAX, 0, 0) > 0);
    assert_eq!(d.lake_through, 3);
    assert_eq!(d.chunks.len(), 1);
    assert_eq!(
        lsns(&rows_of(&snapshot(&d), &ds, 0, 100, &mut |_, _| true)),
        [4]
    );
    // Records at or below the boundary are not taken in again (a replay).
    d.take(open(&ds, 3, &[3]), 0);
    assert_eq!(d.open_rows, 0);
}

#[test]
fn chunks_below_one_checkpoint_all_leave_with_it() {
    let ds = dataset();
    let mut d = DatasetHot::default();
    for lsn in 1..=6 {
        d.take(open(&ds, lsn, &[lsn as i64]), 0);
        d.seal();
    }
    // One sink flush wrote all six records: every chunk goes at once, and stays gone.
    d.tidy(6, Micros::MAX, 0, 0);
    assert_eq!(d.chunks.len(), 0);
    assert_eq!(d.lake_through, 6);
    assert_eq!(d.bytes, 0);
}

#[test]
fn one_record_of_more_sensors_than_16_bits_count_makes_one_chunk() {
    let ds = dataset();
    let mut o = open(&ds, 1, &vec![5; 70_000]);
    for (i, r) in Arc::get_mut(&mut o.readings)
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        r.sensor_id = CompactString::from(format!("s{i}"));
    }
    let mut d = DatasetHot::default();
    d.take(o, 0);
    assert_eq!(d.chunks.len(), 1);
    let rows = rows_of(&snapshot(&d), &ds, 0, 10, &mut |_, s| s == "s69999");
    assert_eq!(rows.len(), 1);
}

#[test]
fn buckets_from_columns_equal_buckets_from_rows() {
    use crate::query::aggregate::{Accumulator, Func, Spec};
    use crate::query::{Fold, Selection};
    let ds = dataset();
    let mut d = DatasetHot::default();
    for lsn in 1..=40u64 {
        let mut o = open(&ds, lsn, &[lsn as i64 * 7, lsn as i64 * 7 + 3]);
        for (i, r) in Arc::get_mut(&mut o.readings)
            .unwrap()
            .iter_mut()
            .enumerate()
        {
            r.sensor_id = CompactString::from(format!("s{}", (lsn as usize + i) % 3));
            r.values[1] = (lsn % 4 != 0).then(|| Value::Float(lsn as f64 / 3.0));
        }
        d.take(o, 0);
        if lsn % 9 == 0 {
            d.seal();
        }
    }
    // Rows of records up to 5 are the lake's.
    d.lake_through = 5;
    let snap = snapshot(&d);
    let sel = Selection {
        dataset: ds.clone(),
        from: 20,
        to: 250,
        filter: crate::feed::session::Filter::parse(Some("s0,s2"), None).unwrap(),
        fields: None,
    };
    let spec = Spec {
        every: 30,
        tz: None,
        fns: Func::ALL.to_vec(),
        by_sensor: true,
        fields: vec![(0, "vehicle_count".into()), (1, "mean_speed".into())],
    };
    let mut columns = Accumulator::new(spec.clone(), 1000);
    let mut keep = |_: Micros, s: &str| sel.wants_sensor(s);
    snap.scan_fold(&sel, (sel.from, sel.to), &mut keep, &mut columns);
    let mut rows = Accumulator::new(spec, 1000);
    for r in rows_of(&snap, &ds, sel.from, sel.to, &mut keep) {
        rows.add(r);
    }
    let (a, b) = (columns.finish().unwrap(), rows.finish().unwrap());
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[test]
fn traffic_readings_cost_few_bytes_each_in_a_chunk() {
    let ds = dataset();
    let mut d = DatasetHot::default();
    let mut lsn = 0;
    while d.chunks.is_empty() {
        lsn += 1;
        let mut o = open(&ds, lsn, &[lsn as i64 * 10_000_000]);
        Arc::get_mut(&mut o.readings).unwrap()[0].sensor_id =
            CompactString::from(format!("sensor-{:04}", lsn % 1000));
        Arc::get_mut(&mut o.readings).unwrap()[0].values[1] = Some(Value::Float(42.5));
        d.take(o, 0);
    }
    let per_reading = d.bytes as f64 / d.chunks[0].rows() as f64;
    assert!(per_reading <= 64.0, "{per_reading} bytes per reading");
}

#[test]
fn another_nodes_rows_read_beside_this_nodes_and_leave_by_the_window_alone() {
    let ds = dataset();
    let mut local = DatasetHot::default();
    local.take(open(&ds, 1, &[10]), 0);
    local.seal();
    local.take(open(&ds, 2, &[20]), 0);
    // The other node numbers its own log: LSNs at or below this node's boundary are not
    // this node's lake's.
    let mut remote = DatasetHot {
        remote: true,
        ..DatasetHot::default()
    };
    remote.append(open(&ds, 1, &[15]), 0);
    remote.seal();
    remote.append(open(&ds, 7, &[25]), 0);
    local.tidy(1, Micros::MAX, 0, 0);
    assert_eq!(local.lake_through, 1);
    let mut both = snapshot(&local);
    both.remote.push(snapshot(&remote));
    let mut rows = rows_of(&both, &ds, 0, 100, &mut |_, _| true);
    rows.sort_by_key(|r| r.ts);
    assert_eq!(
        rows.iter().map(|r| r.ts).collect::<Vec<_>>(),
        [15, 20, 25],
        "row 10 is this node's lake's; the other node's LSN 1 is not"
    );
    // No checkpoint of this node lets the other's chunks go, and none holds them: the
    // window does.
    assert_eq!(remote.tidy(0, 0, 0, 0), 0, "within the window");
    assert!(remote.tidy(0, 20, 0, 0) > 0, "past the window");
    assert_eq!(remote.chunks.len(), 0);
    assert_eq!(remote.lake_through, 0, "no boundary moved");
}
