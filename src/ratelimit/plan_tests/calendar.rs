//! Calendar limits (`limit.window: Calendar`): the spec's checks, and each key's `used`, `remaining` and `resetsAt`
//! from either source, written when it matters.

use super::*;

fn calendar(limit: Value) -> crate::api::ratelimit::RateLimitPolicySpec {
    spec(json!({"limit": limit, "usage": {"scrape": {"urls": ["http://gw:9000/metrics"], "metric": "requests_total"},
                                            "interval": "15s"}}))
}

fn daily(requests: i64) -> crate::api::ratelimit::RateLimitPolicySpec {
    calendar(json!({"requests": requests, "period": "24h", "window": "Calendar"}))
}

/// Plans a cycle with `used` and the tallies of the last one.
fn cycle(checked: &Checked, o: Observed, tallies: &Tallies, now: Timestamp) -> Plan {
    let (stabilizer, current) = (Stabilizer::default(), RateLimitPolicyStatus::default());
    let (override_changed, seeded) = (false, true);
    plan(&Inputs {
        checked,
        observed: &o,
        current: &current,
        override_changed,
        stabilizer: &stabilizer,
        seeded,
        tallies,
        now,
    })
}

fn with_used(mut o: Observed, used: Used) -> Observed {
    o.used = used;
    o
}

/// `key` with its status as `write` left it.
fn after(write: &KeyWrite) -> Arc<ApiKey> {
    let mut k = (*write.key).clone();
    let status = k.status.get_or_insert_with(Default::default);
    status.usage = Some(write.status.usage.clone());
    status.conditions = write.status.conditions.clone();
    Arc::new(k)
}

#[test]
fn an_unknown_time_zone_or_a_period_that_is_no_clock_unit_is_an_invalid_spec() {
    let now = ts("2026-06-01T00:00:00Z");
    let zone = check(
        &calendar(json!({"requests": 10, "period": "24h", "window": "Calendar", "timeZone": "Europe/Atlantis"})),
        now,
    );
    let err = zone.err().expect("refused");
    assert!(err.starts_with("limit.timeZone:") && err.contains("Europe/Atlantis"), "{err}");
    let period = check(&calendar(json!({"requests": 10, "period": "2h", "window": "Calendar"})), now);
    let err = period.err().expect("refused");
    assert!(err.starts_with("limit.period:") && err.contains("1h, 24h or 1mo"), "{err}");
    let boost = json!({"limit": {"requests": 10, "period": "24h", "window": "Calendar"},
        "temporaryOverrides": [{"requests": 99, "period": "1h", "until": "2027-01-01T00:00:00Z", "reason": "x"}]});
    let err = check(&spec(boost), now).err().expect("refused");
    assert!(err.starts_with("temporaryOverrides[0].period:"), "{err}");
    // A month in Berlin is fine, and its rate is its requests over its length.
    let month = check(
        &calendar(json!({"requests": 744, "period": "1mo", "window": "Calendar", "timeZone": "Europe/Berlin"})),
        ts("2026-05-10T00:00:00Z"),
    )
    .expect("valid");
    assert!((month.limit_rps - 744.0 / (31.0 * 86400.0)).abs() < 1e-12, "{}", month.limit_rps);
    let window = month.calendar.as_ref().expect("calendar").window;
    assert_eq!((window.start, window.end), (ts("2026-04-30T22:00:00Z"), ts("2026-05-31T22:00:00Z")));
}

#[test]
fn the_requeue_wakes_at_the_end_of_the_window() {
    let checked = check(
        &spec(json!({"limit": {"requests": 10, "period": "1h", "window": "Calendar"}, "usage": {"interval": "10m",
             "scrape": {"urls": ["http://gw:9000/metrics"], "metric": "requests_total"}}})),
        ts("2026-06-01T10:55:00Z"),
    )
    .expect("valid");
    let wait = checked.requeue_after(ts("2026-06-01T10:55:00Z"), ts("2026-06-01T10:55:00Z"));
    assert_eq!(wait, std::time::Duration::from_secs(300), "the hour ends before the next poll");
}

#[test]
fn a_scrape_source_accumulates_used_across_polls_and_a_restart() {
    let checked = check(&daily(1000), ts("2026-06-01T10:00:00Z")).expect("valid");
    let t0 = ts("2026-06-01T10:00:00Z");
    let t1 = ts("2026-06-01T10:00:15Z");
    let o = with_used(
        observed(rates(&[("a", 4.0)]), None, vec![key("a", json!({}))]),
        Used::Rates { from: Some(t0), to: t1 },
    );
    let p = cycle(&checked, o, &Tallies::new(), t1);
    let w = &p.keys[0];
    assert_eq!((w.status.usage.used, w.status.usage.remaining), (Some(60), Some(940)), "4 req/s × 15 s");
    assert_eq!(w.status.usage.window_start, Some(Time(ts("2026-06-01T00:00:00Z"))));
    assert_eq!(w.status.usage.resets_at, Some(Time(ts("2026-06-02T00:00:00Z"))));
    assert_eq!(p.tallies.get("a").map(|t| t.used), Some(60.0));
    // The next poll adds to the tally in memory, whatever the status holds.
    let t2 = ts("2026-06-01T10:00:30Z");
    let o = with_used(observed(rates(&[("a", 2.0)]), None, vec![after(w)]), Used::Rates { from: Some(t1), to: t2 });
    let p2 = cycle(&checked, o, &p.tallies, t2);
    assert_eq!(p2.tallies.get("a").map(|t| t.used), Some(90.0));
    // A restarted controller has no tallies: the status's count is the base, not 0.
    let t3 = ts("2026-06-01T10:00:45Z");
    let o = with_used(
        observed(rates(&[("a", 2.0)]), None, vec![after(&p2.keys[0])]),
        Used::Rates { from: Some(t2), to: t3 },
    );
    let p3 = cycle(&checked, o, &Tallies::new(), t3);
    assert_eq!(p3.tallies.get("a").map(|t| t.used), Some(120.0));
}

#[test]
fn the_quota_is_exhausted_once_used_and_resets_with_the_window() {
    let t0 = ts("2026-06-01T23:59:45Z");
    let checked = check(&daily(100), t0).expect("valid");
    let t1 = ts("2026-06-01T23:59:55Z");
    let o = with_used(
        observed(rates(&[("a", 10.0)]), None, vec![key("a", json!({}))]),
        Used::Rates { from: Some(t0), to: t1 },
    );
    let p = cycle(&checked, o, &Tallies::new(), t1);
    let w = &p.keys[0];
    assert!(w.status.exhausted(), "100 of 100 used");
    assert_eq!(w.status.usage.remaining, Some(0));
    assert_eq!(w.note.as_ref().map(|n| n.reason), Some("Exhausted"));
    assert!(w.note.as_ref().is_some_and(|n| n.note.contains("100 of 100 requests")), "{:?}", w.note);
    // Past midnight only the 5 s after it count: the quota is back.
    let t2 = ts("2026-06-02T00:00:05Z");
    let checked = check(&daily(100), t2).expect("valid");
    let o = with_used(observed(rates(&[("a", 1.0)]), None, vec![after(w)]), Used::Rates { from: Some(t1), to: t2 });
    let p2 = cycle(&checked, o, &p.tallies, t2);
    let w2 = &p2.keys[0];
    assert!(!w2.status.exhausted());
    assert_eq!((w2.status.usage.used, w2.status.usage.remaining), (Some(5), Some(95)));
    assert_eq!(w2.status.usage.window_start, Some(Time(ts("2026-06-02T00:00:00Z"))));
}

#[test]
fn prometheus_counts_used_by_the_keys_ids() {
    let now = ts("2026-06-01T12:00:00Z");
    let checked = check(&daily(1000), now).expect("valid");
    let member = key("a", json!({"keyId": "aaaaaaaaaaaa"}));
    let counted: Rates = [("aaaaaaaaaaaa".to_string(), 700.4), ("other".to_string(), 5.0)].into_iter().collect();
    let o = with_used(observed(rates(&[("aaaaaaaaaaaa", 0.1)]), None, vec![member]), Used::Counted(counted));
    let p = cycle(&checked, o, &Tallies::new(), now);
    let w = &p.keys[0];
    assert_eq!((w.status.usage.used, w.status.usage.remaining), (Some(700), Some(300)));
    assert_eq!(w.status.usage.utilization, 0.7004);
}

#[test]
fn no_traffic_means_no_writes() {
    let checked = check(&daily(1000), ts("2026-06-01T10:00:00Z")).expect("valid");
    let (t0, t1) = (ts("2026-06-01T10:00:00Z"), ts("2026-06-01T10:00:15Z"));
    let o = with_used(
        observed(rates(&[("a", 0.0)]), None, vec![key("a", json!({}))]),
        Used::Rates { from: Some(t0), to: t1 },
    );
    let p = cycle(&checked, o, &Tallies::new(), t1);
    assert_eq!(p.keys.len(), 1, "the first measurement is written");
    let k = after(&p.keys[0]);
    let mut tallies = p.tallies;
    for n in 2..20 {
        let (from, to) =
            (t1 + jiff::SignedDuration::from_secs(15 * (n - 1)), t1 + jiff::SignedDuration::from_secs(15 * n));
        let o = with_used(observed(rates(&[("a", 0.0)]), None, vec![k.clone()]), Used::Rates { from: Some(from), to });
        let p = cycle(&checked, o, &tallies, to);
        assert!(p.keys.is_empty(), "poll {n}: idle, nothing to write");
        tallies = p.tallies;
    }
}
