use super::*;
use crate::ratelimit::limits::ActiveOverride;

fn effective(requests: i64, period: &str, calendar: Option<CalendarUnit>) -> Effective {
    Effective { requests, period: period.into(), per_second: None, active: None, changes_at: None, calendar }
}

fn limit(requests: i64, period: &str) -> GatewayLimit {
    gateway_limit(&effective(requests, period, None)).expect("limit")
}

#[test]
fn a_period_that_is_a_unit_uses_it() {
    for (period, unit) in [("1s", Unit::Second), ("1m", Unit::Minute), ("1h", Unit::Hour), ("24h", Unit::Day)] {
        let l = limit(600, period);
        assert_eq!((l.requests, l.unit, l.rounded.is_none()), (600, unit, true), "{period}");
    }
    assert_eq!(limit(1, "168h").display(), "1/Week");
    assert_eq!(limit(1, "8760h").display(), "1/Year");
    assert_eq!(limit(3, "60s").display(), "3/Minute", "same duration, other spelling");
}

#[test]
fn other_periods_keep_the_rate_exactly_in_the_longest_unit_within_the_period_that_can() {
    assert_eq!(limit(100, "10m").display(), "10/Minute");
    assert_eq!(limit(3, "90s").display(), "2/Minute");
    assert_eq!(limit(7, "10m").display(), "42/Hour", "0.7/Minute is not whole: the hour is");
    assert_eq!(limit(5, "500ms").display(), "10/Second");
    assert_eq!(limit(1, "30m").display(), "2/Hour");
    assert_eq!(limit(10, "48h").display(), "5/Day");
    assert_eq!(limit(1, "84h").display(), "2/Week", "half a request a day is not whole: the week is");
    for l in [limit(100, "10m"), limit(3, "90s"), limit(7, "10m")] {
        assert!(l.rounded.is_none(), "{l:?}");
    }
}

#[test]
fn a_period_without_an_exact_equivalent_is_rounded_and_says_so() {
    // 3 per 7 s: no whole count up to the minute; 25.7 per minute rounds to 26.
    let l = limit(3, "7s");
    assert_eq!(l.display(), "26/Minute");
    let note = l.rounded.expect("rounded");
    assert!(note.contains("3/7s") && note.contains("26/Minute"), "{note}");
    assert!(note.contains("0.4286") && note.contains("0.4333"), "both rates: {note}");
    // Never zero: 1 per 7 s is 8.57 per minute, not 0 per second.
    assert_eq!(limit(1, "7s").display(), "9/Minute");
    // Within the period when a whole request fits: 1000 per 7 s is 142.86 per second.
    assert_eq!(limit(1000, "7s").display(), "143/Second");
}

#[test]
fn calendar_limits_count_in_their_clock_unit_as_written() {
    for (unit, period, want) in [
        (CalendarUnit::Hour, "1h", "1000/Hour"),
        (CalendarUnit::Day, "24h", "1000/Day"),
        (CalendarUnit::Month, "1mo", "1000/Month"),
    ] {
        let l = gateway_limit(&effective(1000, period, Some(unit))).expect("limit");
        assert_eq!((l.display().as_str(), l.rounded), (want, None));
    }
}

#[test]
fn limits_beyond_the_crd_are_cut_and_unparseable_periods_refused() {
    let l = limit(i64::MAX, "1s");
    assert_eq!(l.requests, u32::MAX);
    assert!(l.rounded.is_some());
    assert!(gateway_limit(&effective(1, "soon", None)).is_err());
    assert!(gateway_limit(&effective(1, "0s", None)).is_err());
}

#[test]
fn an_override_is_rendered_like_the_limit() {
    let mut e = effective(6000, "1m", None);
    e.active = Some(ActiveOverride { index: 0, until: jiff::Timestamp::UNIX_EPOCH, reason: "launch".into() });
    assert_eq!(gateway_limit(&e).expect("limit").display(), "6000/Minute");
}

fn enforce(type_: Option<EnforceType>) -> Enforce {
    serde_json::from_value(serde_json::json!({
        "targetRef": {"kind": "HTTPRoute", "name": "checkout"},
        "clientIdHeader": "x-client-id",
        "type": type_.map(|t| format!("{t:?}")),
    }))
    .expect("enforce")
}

fn member(name: &str, ids: &[&str]) -> Member {
    Member { name: name.into(), client_ids: ids.iter().map(|s| s.to_string()).collect() }
}

const OWNER: Owner<'static> = Owner { name: "gold", namespace: "shop", uid: "u-1" };

#[test]
fn two_keys_render_one_rule_each_with_both_client_ids_and_the_limit() {
    let members = [member("b.v2", &["b.v2", "b.v2-previous"]), member("a", &["a", "a-previous"])];
    let r = render(&OWNER, &enforce(None), &limit(600, "1m"), &members).expect("render");
    assert_eq!((r.keys, r.collisions.len()), (2, 0));
    let want = serde_json::json!({
        "apiVersion": "gateway.envoyproxy.io/v1alpha1",
        "kind": "BackendTrafficPolicy",
        "metadata": {
            "name": "gold", "namespace": "shop",
            "labels": {"app.kubernetes.io/managed-by": "keyward"},
            "ownerReferences": [{"apiVersion": "keyward.dev/v1alpha1", "kind": "RateLimitPolicy", "name": "gold",
                                 "uid": "u-1", "controller": true, "blockOwnerDeletion": false}],
        },
        "spec": {
            "targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "checkout"}],
            "rateLimit": {"type": "Global", "global": {"rules": [
                {"clientSelectors": [{"headers": [{"name": "x-client-id", "type": "RegularExpression",
                                                   "value": "^(?:a|a-previous)$"}]}],
                 "limit": {"requests": 600, "unit": "Minute"}},
                {"clientSelectors": [{"headers": [{"name": "x-client-id", "type": "RegularExpression",
                                                   "value": "^(?:b\\.v2|b\\.v2-previous)$"}]}],
                 "limit": {"requests": 600, "unit": "Minute"}},
            ]}},
        },
    });
    assert_eq!(r.object, want);
}

#[test]
fn local_and_gateway_targets_and_single_client_ids() {
    let mut e = enforce(Some(EnforceType::Local));
    e.target_ref.kind = EnforceTargetKind::Gateway;
    let r = render(&OWNER, &e, &limit(10, "1s"), &[member("k", &["k"])]).expect("render");
    let spec = &r.object["spec"];
    assert_eq!(spec["targetRefs"][0]["kind"], "Gateway");
    assert_eq!(spec["rateLimit"]["type"], "Local");
    assert!(spec["rateLimit"]["global"].is_null());
    let rule = &spec["rateLimit"]["local"]["rules"][0];
    assert_eq!(rule["clientSelectors"][0]["headers"][0]["type"], "Exact");
    assert_eq!(rule["clientSelectors"][0]["headers"][0]["value"], "k");
    assert_eq!(rule["limit"], serde_json::json!({"requests": 10, "unit": "Second"}));
}

#[test]
fn an_override_and_its_end_change_only_the_limits() {
    let members = [member("a", &["a", "a-previous"])];
    let base = render(&OWNER, &enforce(None), &limit(600, "1m"), &members).expect("render");
    let boosted = render(&OWNER, &enforce(None), &limit(6000, "1m"), &members).expect("render");
    let rules = |r: &Rendered| r.object["spec"]["rateLimit"]["global"]["rules"].clone();
    assert_eq!(rules(&boosted)[0]["limit"]["requests"], 6000);
    assert_eq!(rules(&base)[0]["limit"]["requests"], 600);
    assert_eq!(rules(&base)[0]["clientSelectors"], rules(&boosted)[0]["clientSelectors"]);
}

#[test]
fn keys_sharing_a_client_id_are_left_out_and_named() {
    // The default layout: every Secret's entry is `api-key`.
    let members = [
        member("x", &["api-key", "previous-api-key"]),
        member("y", &["api-key", "previous-api-key"]),
        member("z", &["z", "z-previous"]),
    ];
    let r = render(&OWNER, &enforce(None), &limit(600, "1m"), &members).expect("render");
    assert_eq!((r.keys, r.collisions.clone()), (1, vec!["x".to_string(), "y".to_string()]));
    let rules = r.object["spec"]["rateLimit"]["global"]["rules"].as_array().expect("rules").clone();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["clientSelectors"][0]["headers"][0]["value"], "^(?:z|z-previous)$");
}

#[test]
fn more_keys_than_the_crd_holds_render_nothing() {
    let many: Vec<Member> = (0..=MAX_LOCAL_RULES).map(|i| member(&format!("k{i}"), &[&format!("k{i}")])).collect();
    let refused = render(&OWNER, &enforce(Some(EnforceType::Local)), &limit(1, "1s"), &many);
    assert_eq!(refused, Err(Refused::TooManyKeys { keys: 17, rules: 17, max: MAX_LOCAL_RULES }));
    assert!(render(&OWNER, &enforce(Some(EnforceType::Local)), &limit(1, "1s"), &many[..16]).is_ok());
    let global: Vec<Member> = (0..=MAX_GLOBAL_RULES).map(|i| member(&format!("k{i}"), &[&format!("k{i}")])).collect();
    assert!(render(&OWNER, &enforce(None), &limit(1, "1s"), &global).is_err());
    assert!(render(&OWNER, &enforce(None), &limit(1, "1s"), &global[..MAX_GLOBAL_RULES]).is_ok());
}

#[test]
fn the_render_does_not_depend_on_the_order_of_the_members() {
    let a = [member("a", &["a", "a-previous"]), member("b", &["b"]), member("c", &["c", "c-previous"])];
    let mut b = a.clone();
    b.reverse();
    let ra = render(&OWNER, &enforce(None), &limit(600, "1m"), &a).expect("render");
    let rb = render(&OWNER, &enforce(None), &limit(600, "1m"), &b).expect("render");
    assert_eq!(serde_json::to_vec(&ra.object).expect("json"), serde_json::to_vec(&rb.object).expect("json"));
}

#[test]
fn client_ids_too_long_for_one_expression_get_one_exact_rule_each() {
    let long = "k".repeat(253);
    let prev = format!("{long}-previous");
    let shortish = "a.".repeat(126);
    // 126 escaped dots alone make the expression longer than 1024 characters with the previous id.
    let r = render(&OWNER, &enforce(None), &limit(1, "1s"), &[member("m", &[&shortish, &format!("{shortish}x")])])
        .expect("render");
    let rules = r.object["spec"]["rateLimit"]["global"]["rules"].as_array().expect("rules").clone();
    assert_eq!(rules.len(), 1, "756 characters fit");
    let r = render(
        &OWNER,
        &enforce(None),
        &limit(1, "1s"),
        &[member("m", &[&format!("{long}{}", "..".repeat(100)), &format!("{prev}{}", "..".repeat(100))])],
    )
    .expect("render");
    let rules = r.object["spec"]["rateLimit"]["global"]["rules"].as_array().expect("rules").clone();
    assert_eq!(rules.len(), 2);
    assert!(rules.iter().all(|r| r["clientSelectors"][0]["headers"][0]["type"] == "Exact"));
}

#[test]
fn contains_ignores_server_defaults_but_not_edits() {
    let want = serde_json::json!({"rules": [{"headers": [{"name": "h", "value": "a"}], "limit": {"requests": 6}}]});
    let stored = serde_json::json!({"rules": [{"headers": [{"name": "h", "value": "a", "invert": false}],
                                              "limit": {"requests": 6}}], "extra": 1});
    assert!(contains(&stored, &want));
    let edited = serde_json::json!({"rules": [{"headers": [{"name": "h", "value": "a"}], "limit": {"requests": 7}}]});
    assert!(!contains(&edited, &want));
    let added = serde_json::json!({"rules": [{"headers": [{"name": "h", "value": "a"}], "limit": {"requests": 6}},
                                             {"headers": [], "limit": {"requests": 1}}]});
    assert!(!contains(&added, &want), "a rule added by hand is a difference");
    assert!(!contains(&serde_json::json!({}), &want));
}
