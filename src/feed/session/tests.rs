//! The session's filter parsing and matching.

use super::*;
use crate::model::Reading;

#[test]
fn filters_parse_and_match() {
    let f = Filter::parse(Some("a, b"), Some("12.4,55.6,12.7,55.8")).unwrap();
    let mut r = Reading::empty(1, 0);
    r.sensor_id = "a".into();
    assert!(!f.matches(&r), "no position: outside every box");
    r.lat = Some(55.7);
    r.lon = Some(12.5);
    assert!(f.matches(&r));
    r.lon = Some(13.0);
    assert!(!f.matches(&r));
    r.lon = Some(12.5);
    r.sensor_id = "c".into();
    assert!(!f.matches(&r));
    assert!(Filter::parse(None, None).unwrap().matches(&r));
    for bad in ["1,2,3", "a,b,c,d", "12.7,55.6,12.4,55.8", "0,95,1,96"] {
        assert!(Filter::parse(None, Some(bad)).is_err(), "{bad}");
    }
    assert!(Filter::parse(Some(" , "), None).is_err());
}
