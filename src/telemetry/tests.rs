//! Tests of the metric registry: what `/metrics` shows for datasets and HTTP, and the
//! series that exist at 0 before anything happens.

use super::*;
use crate::model::Reason;

#[test]
fn renders_dataset_series_without_device_labels() {
    let m = Metrics::new();
    let d = m.dataset("weather");
    d.accepted.inc_by(3);
    d.rejected(Reason::AboveMax).inc();
    m.http_request("/v1/datasets/{id}/readings", 204, 0.001);
    let text = m.render();
    assert!(
        text.contains("citygate_readings_accepted_total{dataset=\"weather\"} 3"),
        "{text}"
    );
    assert!(
        text.contains(
            "citygate_readings_rejected_total{dataset=\"weather\",reason=\"above_max\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "citygate_readings_rejected_total{dataset=\"weather\",reason=\"not_finite\"} 0"
        ),
        "every reason exists from the start: {text}"
    );
    assert!(text.contains(
        "citygate_http_requests_total{route=\"/v1/datasets/{id}/readings\",status=\"204\"} 1"
    ));
}

#[test]
fn known_label_sets_are_exposed_at_zero_before_any_event() {
    let text = Metrics::new().render();
    for series in [
        "citygate_wal_appends_refused_total{reason=\"full\"} 0",
        "citygate_wal_appends_refused_total{reason=\"io\"} 0",
        "citygate_influx_writes_total{status=\"204\"} 0",
        "citygate_mqtt_publishes_total{reason=\"accepted\"} 0",
        "citygate_feed_deliveries_total{protocol=\"sse\"} 0",
        "citygate_feed_sessions{protocol=\"mqtt\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing:\n{text}");
    }
}
