//! End to end, with the real operator, what only the schedule's unit tests reached before: a cron schedule in a
//! time zone, jitter spreading the keys of one schedule, expiry removing the material of an issued key, and
//! `previousKeyExpiresAt` after a rotation. Expected times are computed here with jiff, independently of the
//! operator's schedule code.

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use serde_json::Value;

use crate::common::kube::{apikey, apply, decode, eventually, get_json, issued, ready_reason, rotation_count};
use crate::common::{control_plane_with_crds, kubectl_ok, namespace, operator};

/// A timestamp field of an ApiKey's status.
fn status_time(ak: &Value, field: &str) -> Option<Timestamp> {
    ak["status"][field].as_str()?.parse().ok()
}

/// The first `hour:minute:00` wall-clock time in `now`'s zone strictly after `now`.
fn next_wall_time(now: &Zoned, hour: i8, minute: i8) -> Zoned {
    let today = now.with().hour(hour).minute(minute).second(0).subsec_nanosecond(0).build().expect("a wall time");
    if today > *now { today } else { today.tomorrow().expect("tomorrow") }
}

#[tokio::test]
async fn a_cron_schedule_in_a_time_zone_fires_at_that_zones_wall_time() {
    control_plane_with_crds().await;
    let ns = namespace("cron_time_zone");
    let _op = operator::scoped(&ns);
    let zone = "America/New_York";
    let tz = TimeZone::get(zone).expect("the zone is in jiff's database");
    // An hour about 12 hours away in New York: the next firing is unambiguous whenever the test runs.
    let now = Timestamp::now().to_zoned(tz.clone());
    let hour = (now.hour() + 12) % 24;
    apply(&ns, &apikey("cron", &format!("  rotation: {{schedule: \"30 {hour} * * *\", timeZone: {zone}}}")));
    let ak = eventually(60, "the key issued with its next rotation time", || {
        issued(&ns, "cron").filter(|a| status_time(a, "nextRotationTime").is_some())
    })
    .await;
    let next = status_time(&ak, "nextRotationTime").expect("nextRotationTime");
    let want = next_wall_time(&now, hour, 30);
    assert_eq!(next, want.timestamp(), "the next {hour}:30 in {zone} is {want}");
    // The same wall time read as UTC would be off by exactly the zone's offset (-5 h or -4 h): the schedule was
    // read in the zone, not in UTC.
    let offset = tz.to_offset(next);
    assert!([-5, -4].contains(&(offset.seconds() / 3600)), "New York's offset: {offset}");
    let as_utc = want.datetime().to_zoned(TimeZone::UTC).expect("as UTC").timestamp();
    assert_eq!(as_utc.duration_since(next), SignedDuration::from_secs(i64::from(offset.seconds())));
    // The printer column shows it too.
    let table = kubectl_ok(&["get", "apikey", "cron", "-n", &ns]);
    assert!(table.contains(&next.to_string()[..10]), "{table}");
}

#[tokio::test]
async fn jitter_spreads_the_keys_of_one_schedule_within_its_bound() {
    control_plane_with_crds().await;
    let ns = namespace("jitter");
    let _op = operator::scoped(&ns);
    let now = Timestamp::now().to_zoned(TimeZone::UTC);
    let hour = (now.hour() + 12) % 24;
    let names = ["j1", "j2", "j3"];
    for name in names {
        apply(&ns, &apikey(name, &format!("  rotation: {{schedule: \"0 {hour} * * *\", jitter: 1h}}")));
    }
    let base = next_wall_time(&now, hour, 0).timestamp();
    let mut times = Vec::new();
    for name in names {
        let ak = eventually(60, &format!("{name} issued with its next rotation time"), || {
            issued(&ns, name).filter(|a| status_time(a, "nextRotationTime").is_some())
        })
        .await;
        let t = status_time(&ak, "nextRotationTime").expect("nextRotationTime");
        assert!(t >= base && t <= base + SignedDuration::from_hours(1), "{name}: {t} is not within 1h after {base}");
        times.push(t);
    }
    eprintln!("schedule time {base}, with jitter: {times:?}");
    assert!(times.iter().any(|t| *t != times[0]), "three keys on one schedule all got {}: no jitter", times[0]);
    // The jitter of a key is stable: its next rotation time does not move between reconciles.
    kubectl_ok(&["annotate", "apikey/j1", "-n", &ns, "poke=1"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let again = status_time(&get_json(&ns, "apikey/j1").expect("j1"), "nextRotationTime");
    assert_eq!(again, Some(times[0]), "j1's jittered time moved");
}

#[tokio::test]
async fn expiry_removes_the_material_of_an_issued_key() {
    control_plane_with_crds().await;
    let ns = namespace("expiry_of_issued");
    let _op = operator::scoped(&ns);
    // Far enough ahead to issue and rotate first on a busy machine; whole seconds, as the API stores them.
    let expires = Timestamp::from_second(Timestamp::now().as_second() + 30).expect("time");
    apply(&ns, &apikey("exp", &format!("  expiresAt: \"{expires}\"\n  rotation: {{gracePeriod: 1h}}")));
    eventually(20, "the key issued before its expiry", || issued(&ns, "exp")).await;
    // A rotation, so that a previous key is held too: both must go.
    kubectl_ok(&["annotate", "apikey/exp", "-n", &ns, "keyward.dev/rotate=before-expiry"]);
    eventually(20, "a previous key held before the expiry", || {
        decode(&get_json(&ns, "secret/exp")?, "previous-api-key").map(|_| ())
    })
    .await;
    assert!(Timestamp::now() < expires, "the setup outlasted the expiry; the test proves nothing");
    let ak = eventually(90, "Expired, with no key material left", || {
        let ak = get_json(&ns, "apikey/exp")?;
        let s = get_json(&ns, "secret/exp")?;
        let gone = decode(&s, "api-key").is_none() && decode(&s, "previous-api-key").is_none();
        (gone && ready_reason(&ak) == Some(("False".into(), "Expired".into()))).then_some(ak)
    })
    .await;
    let seen_at = Timestamp::now();
    assert!(seen_at >= expires, "the material was removed before expiresAt ({expires})");
    // Removed at the expiry (the reconcile is scheduled for it), not on some later event.
    assert!(seen_at.duration_since(expires) < SignedDuration::from_secs(30), "removed {seen_at} for {expires}");
    let (_, _, message) = crate::common::kube::condition(&ak, "Ready").expect("Ready");
    assert!(!message.is_empty(), "the Expired condition says why");
}

#[tokio::test]
async fn previous_key_expires_at_the_rotation_time_plus_the_grace_period() {
    control_plane_with_crds().await;
    let ns = namespace("previous_expires_at");
    let _op = operator::scoped(&ns);
    apply(&ns, &apikey("g", "  rotation: {gracePeriod: 1h30m}"));
    eventually(60, "the first key", || issued(&ns, "g")).await;
    kubectl_ok(&["annotate", "apikey/g", "-n", &ns, "keyward.dev/rotate=once"]);
    let ak = eventually(60, "the rotation with its previous key's end", || {
        issued(&ns, "g").filter(|a| rotation_count(a) == 1 && status_time(a, "previousKeyExpiresAt").is_some())
    })
    .await;
    let rotated = status_time(&ak, "lastRotationTime").expect("lastRotationTime");
    let until = status_time(&ak, "previousKeyExpiresAt").expect("previousKeyExpiresAt");
    assert_eq!(until, rotated + SignedDuration::from_mins(90), "previousKeyExpiresAt = lastRotationTime + 1h30m");
    // The Secret's bookkeeping says the same.
    let s = get_json(&ns, "secret/g").expect("secret");
    let ann = |a: &str| s["metadata"]["annotations"][format!("keyward.dev/{a}")].as_str().map(str::to_string);
    let ann_time = |a: &str| ann(a).and_then(|v| v.parse::<Timestamp>().ok());
    assert_eq!(ann_time("rotated-at"), Some(rotated));
    assert_eq!(ann_time("previous-expires-at"), Some(until));
    assert!(decode(&s, "previous-api-key").is_some(), "the previous key is held until then");
}

/// A second rotation inside the grace period would revoke the older key early: it waits for the grace end instead,
/// with Ready=True reason `RotationDeferred` saying until when, and then rotates once. Every key whose grace has not
/// ended stays in the Secret the whole time.
#[tokio::test]
async fn a_rotation_inside_the_grace_period_waits_for_its_end() {
    control_plane_with_crds().await;
    let ns = namespace("grace_overlap");
    let _op = operator::scoped(&ns);
    apply(&ns, &apikey("o", "  rotation: {gracePeriod: 8s}"));
    let first = eventually(60, "the first key", || issued(&ns, "o")).await["status"]["keyId"].clone();
    kubectl_ok(&["annotate", "apikey/o", "-n", &ns, "keyward.dev/rotate=one"]);
    let ak = eventually(30, "the first rotation", || issued(&ns, "o").filter(|a| rotation_count(a) == 1)).await;
    let second = ak["status"]["keyId"].clone();
    let grace_end = status_time(&ak, "previousKeyExpiresAt").expect("previousKeyExpiresAt");
    kubectl_ok(&["annotate", "--overwrite", "apikey/o", "-n", &ns, "keyward.dev/rotate=two"]);
    let waiting = eventually(30, "the deferral", || {
        get_json(&ns, "apikey/o").filter(|a| ready_reason(a).is_some_and(|(_, r)| r == "RotationDeferred"))
    })
    .await;
    let (status, _, message) = crate::common::kube::condition(&waiting, "Ready").expect("Ready");
    assert_eq!(status, "True", "the current key works while the rotation waits");
    assert!(message.contains(&grace_end.to_string()), "the message says until when: {message}");
    assert_eq!(status_time(&waiting, "nextRotationTime"), Some(grace_end), "the next rotation is the grace end");
    assert_eq!(rotation_count(&waiting), 1, "not rotated yet");
    // Until the grace end the Secret holds both keys, the first one as the previous key.
    while Timestamp::now() < grace_end - SignedDuration::from_secs(1) {
        let s = get_json(&ns, "secret/o").expect("secret");
        let previous = decode(&s, "previous-api-key").map(|k| crate::common::kube::key_id(&k));
        assert_eq!(previous.as_deref(), first.as_str(), "the first key was dropped before its grace ended");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let ak = eventually(30, "the deferred rotation", || issued(&ns, "o").filter(|a| rotation_count(a) == 2)).await;
    assert_eq!(ak["status"]["lastRotateRequest"], "two");
    assert_eq!(ak["status"]["previousKeyId"], second, "the key current before now has its own grace period");
    assert!(status_time(&ak, "lastRotationTime").is_some_and(|t| t >= grace_end), "rotated no earlier than the end");
    assert_eq!(ready_reason(&ak).map(|(_, r)| r).as_deref(), Some("KeyIssued"));
}

/// Without `gracePeriod`, the 24h default is shortened to half the time until the next scheduled rotation, so the
/// schedule is kept and every key gets its whole grace period.
#[tokio::test]
async fn the_default_grace_fits_a_short_interval() {
    control_plane_with_crds().await;
    let ns = namespace("default_grace");
    let _op = operator::scoped(&ns);
    apply(&ns, &apikey("d", "  rotation: {interval: 20s}"));
    let ak = eventually(60, "a scheduled rotation", || issued(&ns, "d").filter(|a| rotation_count(a) >= 1)).await;
    let rotated = status_time(&ak, "lastRotationTime").expect("lastRotationTime");
    let until = status_time(&ak, "previousKeyExpiresAt").expect("previousKeyExpiresAt");
    assert_eq!(until, rotated + SignedDuration::from_secs(10), "half the 20 s interval, not 24h");
    let ak = eventually(60, "the next rotation, on time", || issued(&ns, "d").filter(|a| rotation_count(a) >= 2)).await;
    let next = status_time(&ak, "lastRotationTime").expect("lastRotationTime");
    assert!(next.duration_since(rotated) < SignedDuration::from_secs(25), "rotated {next} after {rotated}");
}

/// Shortening `gracePeriod` while a previous key is held is a spec change, not an edit: the current key stays (no
/// `KeyTampered`, no new key), and the previous key goes at the shorter end.
#[tokio::test]
async fn a_shortened_grace_period_ends_the_previous_key_early_and_keeps_the_current_one() {
    control_plane_with_crds().await;
    let ns = namespace("grace_shortened");
    let _op = operator::scoped(&ns);
    apply(&ns, &apikey("s", "  rotation: {gracePeriod: 1h}"));
    eventually(60, "the first key", || issued(&ns, "s")).await;
    kubectl_ok(&["annotate", "apikey/s", "-n", &ns, "keyward.dev/rotate=one"]);
    let ak = eventually(60, "the rotation", || issued(&ns, "s").filter(|a| rotation_count(a) == 1)).await;
    let current = ak["status"]["keyId"].clone();
    assert!(ak["status"]["previousKeyId"].is_string());
    apply(&ns, &apikey("s", "  rotation: {gracePeriod: 2s}"));
    let ak = eventually(60, "the previous key gone at the shorter end", || {
        issued(&ns, "s").filter(|a| a["status"]["previousKeyId"].is_null())
    })
    .await;
    assert_eq!(ak["status"]["keyId"], current, "the current key is kept");
    assert_eq!(rotation_count(&ak), 1, "no new key");
    let events = kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]);
    assert!(!events.contains("KeyTampered"), "a spec change is not tampering");
}
