//! The chaos soak, CI-sized: a minute of steady load through meshed mTLS proxies while
//! leaves (one minute long) renew, endpoints churn every second, the split is
//! reweighted, a pod's proxy is killed and restarted, and the controller and identity
//! service restart. Every request is accounted for; none fails but those in flight to
//! the killed proxy. (`mesh-chaos --duration 10m` is the long run: docs/chaos.md.)

use std::time::Duration;

#[tokio::test]
async fn a_minute_of_chaos_loses_no_request() {
    let report = mesh_test::chaos::run(mesh_test::chaos::Settings {
        duration: Duration::from_secs(60),
        rate: 20,
    })
    .await;
    eprintln!(
        "sent {} ok {} excused {:?} unexpected {:?}",
        report.sent, report.ok, report.excused, report.unexpected
    );
    assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
    assert_eq!(
        report.sent,
        report.ok + report.excused.len() as u64,
        "a request is unaccounted for"
    );
    // The chaos happened: three rounds of it, traffic on both versions, and every
    // proxy renewed its one-minute leaf at least once (5 proxies start with one each).
    let events: Vec<&str> = report.events.iter().map(|(_, e)| e.as_str()).collect();
    for what in [
        "split reweighted",
        "controller restarted",
        "is back",
        "identity restarted",
    ] {
        assert!(
            events.iter().filter(|e| e.contains(what)).count() >= 2,
            "{what}: {events:?}"
        );
    }
    assert!(
        report.by_version[0] > 0 && report.by_version[1] > 0,
        "{:?}",
        report.by_version
    );
    assert!(
        report.certificates_issued >= 10,
        "{} issued",
        report.certificates_issued
    );
}
