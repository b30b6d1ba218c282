//! End to end, with the real operator and a simulated gateway, what only unit tests reached before: a custom
//! `usage.keyLabel` with a custom `nearLimitRatio`, and the scale-up stabilization window (a spike shorter than the
//! window does not scale the gateway; a sustained rise does, once it has lasted the window).

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use keyward::devenv::traffic::TrafficSim;

use crate::common::kube::{apikey, apply, eventually, get_json, has_event, is};
use crate::common::ratelimit::{METRIC, gateway_sim, policy, replicas, workload};
use crate::common::{control_plane_with_crds, namespace, operator};

/// `status.usage.requestsPerSecond` of an ApiKey.
fn rps(ak: &serde_json::Value) -> Option<f64> {
    ak["status"]["usage"]["requestsPerSecond"].as_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_key_label_and_near_limit_ratio() {
    control_plane_with_crds().await;
    let ns = namespace("usage_key_label_ratio");
    let _op = operator::scoped(&ns);
    // The gateway labels its counter `client`, not the default `api_key`: a policy that ignored keyLabel would find
    // no series for its keys and report no usage at all.
    let gw = TrafficSim::start("127.0.0.1:0", METRIC, "client").await.expect("traffic simulator");
    apply(
        &ns,
        &policy(
            "half",
            &format!(
                "  limit: {{requests: 600, period: 1m}}\n  nearLimitRatio: 0.5\n  usage:\n    keyLabel: client\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}",
                gw.url()
            ),
        ),
    );
    apply(&ns, &apikey("checkout", "  rateLimitPolicyRef: {name: half}"));
    apply(&ns, &apikey("search", "  rateLimitPolicyRef: {name: half}"));
    let search_id = eventually(60, "search's key id", || {
        get_json(&ns, "apikey/search")?["status"]["keyId"].as_str().map(str::to_string)
    })
    .await;
    // 6 of 10 req/s: utilization 0.6, near the limit at a ratio of 0.5 (not at the default 0.8).
    gw.set_rate("checkout", 6.0);
    gw.set_rate(&search_id, 2.0);
    let ak = eventually(60, "checkout NearLimit at 0.6", || {
        get_json(&ns, "apikey/checkout").filter(|a| is(a, "NearLimit", "True"))
    })
    .await;
    let measured = rps(&ak).expect("requestsPerSecond");
    assert!((5.0..=7.0).contains(&measured), "about 6 req/s: {measured}");
    assert!(is(&ak, "Exhausted", "False"), "{:?}", ak["status"]);
    let utilization = ak["status"]["usage"]["utilization"].as_f64().expect("utilization");
    assert!((0.5..0.8).contains(&utilization), "between the custom and the default ratio: {utilization}");
    assert!(has_event(&ns, "ApiKey", "checkout", "NearLimit"));
    // The key labelled by its keyId under the custom label is measured too, and is not near the limit at 0.2.
    let search = eventually(60, "search measured by keyId", || {
        get_json(&ns, "apikey/search").filter(|a| rps(a).is_some_and(|r| r > 1.0))
    })
    .await;
    assert!(is(&search, "NearLimit", "False"), "{:?}", search["status"]);
    // Below the ratio (and its 0.05 hysteresis band): the condition clears.
    gw.set_rate("checkout", 4.0);
    eventually(60, "checkout no longer NearLimit at 0.4", || {
        get_json(&ns, "apikey/checkout").filter(|a| is(a, "NearLimit", "False"))
    })
    .await;
}

/// `status.observedUsage` of the policy.
fn observed(ns: &str, name: &str) -> Option<f64> {
    get_json(ns, &format!("rlp/{name}"))?["status"]["observedUsage"].as_f64()
}

/// Polls for `secs` seconds that the Deployment keeps `want` replicas; returns the highest observed usage.
async fn holds(ns: &str, want: i64, secs: u64, what: &str) -> f64 {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut highest = 0.0f64;
    while Instant::now() < until {
        assert_eq!(replicas(ns, "deployment/gateway"), Some(want), "{what}");
        highest = highest.max(observed(ns, "gw").unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    highest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_waits_for_its_stabilization_window() {
    control_plane_with_crds().await;
    let ns = namespace("usage_scale_up_window");
    let _op = operator::scoped(&ns);
    let gw = gateway_sim().await;
    apply(&ns, &workload("Deployment", "gateway", Some(1)));
    apply(
        &ns,
        &policy(
            "gw",
            &format!(
                "  limit: {{requests: 100000, period: 1s}}\n  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}\n  scaling:\n    targetRef: {{apiVersion: apps/v1, kind: Deployment, name: gateway}}\n    minReplicas: 1\n    maxReplicas: 10\n    capacityPerReplica: {{requests: 100, period: 1s}}\n    targetUtilization: 100\n    scaleUp: {{stabilizationWindow: 20s}}\n    scaleDown: {{stabilizationWindow: 0s}}",
                gw.url()
            ),
        ),
    );
    // 50 req/s: one replica, measured.
    gw.set_rate("a", 50.0);
    eventually(60, "the baseline measured", || observed(&ns, "gw").filter(|u| (30.0..=70.0).contains(u))).await;
    let p = get_json(&ns, "rlp/gw").expect("policy");
    assert!(is(&p, "ScalingActive", "True"), "{:?}", p["status"]);

    // A spike of 8 s at 350 req/s (four replicas' worth), shorter than the 20 s window: measured, not followed.
    let spike = Instant::now();
    gw.set_rate("a", 350.0);
    let highest = holds(&ns, 1, 8, "no scale-up during a spike shorter than the window").await;
    gw.set_rate("a", 50.0);
    assert!(highest > 200.0, "the spike was not measured (highest observed usage {highest}): the test proves nothing");
    let rest = 28u64.saturating_sub(spike.elapsed().as_secs());
    holds(&ns, 1, rest, "no scale-up after a spike shorter than the window").await;

    // A sustained rise: the gateway scales up, but only once the rise has lasted the window.
    let rise = Timestamp::now();
    gw.set_rate("a", 350.0);
    let first = eventually(90, "a scale-up", || {
        replicas(&ns, "deployment/gateway").filter(|&r| r > 1).and_then(|_| get_json(&ns, "rlp/gw"))
    })
    .await;
    let scaled: Timestamp = first["status"]["lastScaleTime"].as_str().expect("lastScaleTime").parse().expect("time");
    // The last low recommendation came at most one poll after the rise; the window holds 20 s after it. Whole
    // seconds in status, and some slack: a scaler without the window would act within a poll or two.
    assert!(scaled.duration_since(rise) >= SignedDuration::from_secs(15), "scaled at {scaled} for a rise at {rise}");
    eventually(60, "4 replicas", || replicas(&ns, "deployment/gateway").filter(|&r| r == 4)).await;
    assert!(has_event(&ns, "RateLimitPolicy", "gw", "ScaledUp"));
}

/// No stale verdicts: an Exhausted key whose gateway stops answering keeps its verdict for a couple of polls, then
/// `NearLimit` and `Exhausted` turn `Unknown` with reason `UsageUnavailable`; when usage comes back, so do they.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_turn_unknown_while_usage_is_unavailable() {
    control_plane_with_crds().await;
    let ns = namespace("usage_stale_verdicts");
    let _op = operator::scoped(&ns);
    let gw = TrafficSim::start("127.0.0.1:0", METRIC, "api_key").await.expect("traffic simulator");
    let usage = format!("  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}", gw.url());
    apply(&ns, &policy("tier", &format!("  limit: {{requests: 60, period: 1m}}\n{usage}")));
    apply(&ns, &apikey("hot", "  rateLimitPolicyRef: {name: tier}"));
    gw.set_rate("hot", 3.0);
    eventually(60, "hot Exhausted", || get_json(&ns, "apikey/hot").filter(|a| is(a, "Exhausted", "True"))).await;
    gw.set_available(false);
    let ak = eventually(60, "the verdicts Unknown", || {
        get_json(&ns, "apikey/hot").filter(|a| is(a, "Exhausted", "Unknown") && is(a, "NearLimit", "Unknown"))
    })
    .await;
    let (_, reason, message) = crate::common::kube::condition(&ak, "Exhausted").expect("Exhausted");
    assert_eq!(reason, "UsageUnavailable");
    assert!(message.contains("unavailable since"), "the message says since when: {message}");
    let policy = get_json(&ns, "ratelimitpolicy/tier").expect("policy");
    assert!(is(&policy, "UsageAvailable", "False"), "{:?}", policy["status"]);
    assert_eq!(policy["status"]["keysExhausted"], 0, "an Unknown verdict is not counted");
    gw.set_available(true);
    eventually(60, "a fresh verdict", || get_json(&ns, "apikey/hot").filter(|a| is(a, "Exhausted", "True"))).await;
}

/// `onExhausted: Suspend`: a key Exhausted without a break for `after` loses its key material, with a Warning event
/// and `Ready=False` reason `SuspendedForAbuse`; re-applying its manifest (what GitOps does) does not lift it, traffic
/// stopping does not either; a person's `keyward.dev/abuse-cleared` annotation does, and a fresh key is issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_exhausted_too_long_is_suspended_until_a_person_clears_it() {
    control_plane_with_crds().await;
    let ns = namespace("usage_abuse");
    let _op = operator::scoped(&ns);
    let gw = TrafficSim::start("127.0.0.1:0", METRIC, "api_key").await.expect("traffic simulator");
    let usage = format!("  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}", gw.url());
    let spec = format!("  limit: {{requests: 60, period: 1m}}\n  onExhausted: {{action: Suspend, after: 3s}}\n{usage}");
    apply(&ns, &policy("strict", &spec));
    let manifest = apikey("abuser", "  rateLimitPolicyRef: {name: strict}");
    apply(&ns, &manifest);
    apply(&ns, &apikey("calm", "  rateLimitPolicyRef: {name: strict}"));
    eventually(60, "abuser issued", || crate::common::kube::issued(&ns, "abuser")).await;
    gw.set_rate("abuser", 5.0);
    gw.set_rate("calm", 0.2);
    let ak = eventually(60, "abuser suspended for abuse", || {
        get_json(&ns, "apikey/abuser").filter(|a| is(a, "SuspendedForAbuse", "True") && is(a, "Ready", "False"))
    })
    .await;
    let (_, reason, _) = crate::common::kube::condition(&ak, "Ready").expect("Ready");
    assert_eq!(reason, "SuspendedForAbuse");
    let secret = eventually(30, "the key material removed", || {
        get_json(&ns, "secret/abuser").filter(|s| crate::common::kube::decode(s, "api-key").is_none())
    })
    .await;
    assert!(crate::common::kube::decode(&secret, "previous-api-key").is_none(), "no previous key either");
    assert!(has_event(&ns, "ApiKey", "abuser", "SuspendedForAbuse"));
    assert!(is(&get_json(&ns, "apikey/calm").expect("calm"), "Ready", "True"), "the other key is untouched");
    // GitOps re-applies the same manifest, and the traffic stops: neither lifts the suspension.
    apply(&ns, &manifest);
    gw.set_rate("abuser", 0.0);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ak = get_json(&ns, "apikey/abuser").expect("abuser");
    assert!(is(&ak, "SuspendedForAbuse", "True") && is(&ak, "Ready", "False"), "{:?}", ak["status"]);
    // A person clears it: a fresh key.
    let now = Timestamp::now() + SignedDuration::from_secs(1);
    let now = Timestamp::from_second(now.as_second()).expect("now");
    let cleared = format!("keyward.dev/abuse-cleared={now}");
    crate::common::kubectl_ok(&["annotate", "--overwrite", "apikey/abuser", "-n", &ns, &cleared]);
    eventually(60, "a fresh key after the clearance", || crate::common::kube::issued(&ns, "abuser")).await;
    // The policy's next cycle removes the cleared condition (the ApiKey controller already ignores it).
    eventually(60, "the cleared condition gone", || {
        get_json(&ns, "apikey/abuser").filter(|a| !is(a, "SuspendedForAbuse", "True"))
    })
    .await;
}

/// The key id in `field` (`keyId`, `previousKeyId`) of an ApiKey's status.
fn key_id_of(ns: &str, name: &str, field: &str) -> Option<String> {
    get_json(ns, &format!("apikey/{name}"))?["status"][field].as_str().map(str::to_string)
}

/// Rotates `name` on request and returns (the key id before, the key id after).
async fn rotated(ns: &str, name: &str) -> (String, String) {
    let before = eventually(60, "the key id", || key_id_of(ns, name, "keyId")).await;
    crate::common::kubectl_ok(&[
        "annotate",
        "--overwrite",
        &format!("apikey/{name}"),
        "-n",
        ns,
        "keyward.dev/rotate=r1",
    ]);
    let after = eventually(60, "the rotation", || {
        key_id_of(ns, name, "keyId")
            .filter(|id| *id != before && key_id_of(ns, name, "previousKeyId").as_ref() == Some(&before))
    })
    .await;
    (before, after)
}

/// A policy scraping `gw` every second, and the ApiKey `name` with the given rotation, in it.
fn overlap_setup(ns: &str, gw: &TrafficSim, name: &str, rotation: &str) {
    let usage = format!("  usage:\n    interval: 1s\n    scrape: {{urls: [\"{}\"], metric: {METRIC}}}", gw.url());
    apply(ns, &policy("tier", &format!("  limit: {{requests: 6000, period: 1m}}\n{usage}")));
    apply(ns, &apikey(name, &format!("  rotation: {rotation}\n  rateLimitPolicyRef: {{name: tier}}")));
}

/// `retirePreviousWhenIdle`: while clients use the previous key it stays; once its traffic (by key id) has stopped
/// for the configured time it is removed, long before its one-hour grace period ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_previous_key_is_retired_before_its_grace_period_ends() {
    control_plane_with_crds().await;
    let ns = namespace("usage_retire_idle");
    let _op = operator::scoped(&ns);
    let gw = TrafficSim::start("127.0.0.1:0", METRIC, "api_key").await.expect("traffic simulator");
    overlap_setup(&ns, &gw, "r", "{gracePeriod: 1h, retirePreviousWhenIdle: 3s}");
    let first = eventually(60, "the first key", || key_id_of(&ns, "r", "keyId")).await;
    gw.set_rate(&first, 2.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (old, _) = rotated(&ns, "r").await;
    assert_eq!(old, first);
    // Still used: kept (the policy reports its traffic under status.usage.previousKey).
    eventually(30, "the previous key's traffic reported", || {
        get_json(&ns, "apikey/r")
            .filter(|a| a["status"]["usage"]["previousKey"]["requestsPerSecond"].as_f64().is_some_and(|r| r > 0.5))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(key_id_of(&ns, "r", "previousKeyId").as_deref(), Some(first.as_str()), "kept while in use");
    // Its clients stop: retired 3 s later.
    gw.set_rate(&first, 0.0);
    let started = Timestamp::now();
    eventually(60, "the idle previous key retired", || {
        get_json(&ns, "apikey/r").filter(|a| a["status"]["previousKeyId"].is_null())
    })
    .await;
    assert!(Timestamp::now().duration_since(started) >= SignedDuration::from_secs(3), "retired before it was idle 3 s");
    let s = get_json(&ns, "secret/r").expect("secret");
    assert!(crate::common::kube::decode(&s, "previous-api-key").is_none(), "gone from the Secret");
    assert!(has_event(&ns, "ApiKey", "r", "PreviousKeyRetired"));
}

/// `extendGraceWhileInUse`: at the end of its grace period a previous key that still has traffic is kept, with
/// `PreviousKeyInUse=True` and a Warning event, until its traffic stops (one key) or `max` after the rotation is
/// reached (another key whose clients never stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_key_in_use_is_kept_until_its_traffic_stops_or_max() {
    control_plane_with_crds().await;
    let ns = namespace("usage_extend_in_use");
    let _op = operator::scoped(&ns);
    let gw = TrafficSim::start("127.0.0.1:0", METRIC, "api_key").await.expect("traffic simulator");
    overlap_setup(&ns, &gw, "e", "{gracePeriod: 3s, extendGraceWhileInUse: {max: 1h}}");
    apply(
        &ns,
        &apikey(
            "m",
            "  rotation: {gracePeriod: 2s, extendGraceWhileInUse: {max: 10s}}\n  rateLimitPolicyRef: {name: tier}",
        ),
    );
    for name in ["e", "m"] {
        let id = eventually(60, "the first key", || key_id_of(&ns, name, "keyId")).await;
        gw.set_rate(&id, 2.0);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (e_old, _) = rotated(&ns, "e").await;
    let (m_old, _) = rotated(&ns, "m").await;
    let ak = eventually(60, "e's previous key kept for its traffic", || {
        get_json(&ns, "apikey/e").filter(|a| is(a, "PreviousKeyInUse", "True"))
    })
    .await;
    let (_, _, message) = crate::common::kube::condition(&ak, "PreviousKeyInUse").expect("condition");
    assert!(message.contains("req/s") && message.contains(&e_old), "{message}");
    assert_eq!(ak["status"]["previousKeyId"], e_old.as_str(), "still held past its grace period");
    assert!(has_event(&ns, "ApiKey", "e", "PreviousKeyInUse"));
    // m's clients never stop: its previous key goes at max (10 s after the rotation) anyway.
    eventually(60, "m's previous key removed at max", || {
        get_json(&ns, "apikey/m")
            .filter(|a| a["status"]["previousKeyId"].is_null() && !is(a, "PreviousKeyInUse", "True"))
    })
    .await;
    assert!(gw.rates().get(&m_old).is_some_and(|r| *r > 0.0), "m's old key still had traffic");
    // e's clients stop: its previous key goes, and the condition with it.
    gw.set_rate(&e_old, 0.0);
    eventually(60, "e's previous key removed once idle", || {
        get_json(&ns, "apikey/e")
            .filter(|a| a["status"]["previousKeyId"].is_null() && !is(a, "PreviousKeyInUse", "True"))
    })
    .await;
}
