use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::*;
use crate::ratelimit::enforce::render::{Member, Owner, Unit};

fn effective() -> Effective {
    Effective {
        requests: 600,
        period: "1m".into(),
        per_second: Some(10.0),
        active: None,
        changes_at: None,
        calendar: None,
    }
}

fn enforce() -> crate::api::ratelimit::Enforce {
    serde_json::from_value(serde_json::json!({
        "targetRef": {"kind": "HTTPRoute", "name": "checkout"}, "clientIdHeader": "x-client-id"}))
    .expect("enforce")
}

const OWNER: Owner<'static> = Owner { name: "gold", namespace: "shop", uid: "u-1" };

fn rendered(members: &[Member], limit: &GatewayLimit) -> Result<Rendered, Refused> {
    render::render(&OWNER, &enforce(), limit, members)
}

fn members() -> Vec<Member> {
    vec![Member { name: "a".into(), client_ids: vec!["a".into(), "a-previous".into()] }]
}

fn limit() -> GatewayLimit {
    GatewayLimit { requests: 600, unit: Unit::Minute, rounded: None }
}

/// The object as the API server would store `render`: with server defaults added.
fn stored(render: &Rendered, uid: &str) -> Btp {
    let mut spec = render.object["spec"].clone();
    spec["rateLimit"]["global"]["rules"][0]["clientSelectors"][0]["headers"][0]["invert"] = false.into();
    let mut b = Btp { spec, ..Default::default() };
    b.metadata.name = Some("gold".into());
    b.metadata.labels = Some([("app.kubernetes.io/managed-by".to_string(), "keyward".to_string())].into());
    b.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "keyward.dev/v1alpha1".into(),
        kind: "RateLimitPolicy".into(),
        name: "gold".into(),
        uid: uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    }]);
    b
}

fn decide_with(seen: Result<Seen, String>, crd: Crd, current: &RateLimitPolicyStatus) -> Decision {
    let (e, l) = (effective(), limit());
    let r = rendered(&members(), &l);
    decide(&Inputs {
        name: "gold",
        header: "x-client-id",
        effective: &e,
        limit: &l,
        render: &r,
        crd: &crd,
        seen: &seen,
        current,
    })
}

fn condition(d: &Decision, type_: &str) -> (bool, &'static str) {
    let c = d.conditions.iter().find(|c| c.type_ == type_).expect("condition");
    (c.status, c.reason)
}

#[test]
fn a_missing_object_is_applied_with_an_event() {
    let d = decide_with(Ok(Seen::Missing), Crd::Present, &RateLimitPolicyStatus::default());
    assert!(matches!(d.write, Write::Apply(_)));
    assert_eq!(condition(&d, ENFORCED), (true, reason::ENFORCED));
    assert_eq!(condition(&d, ENFORCEMENT_CONFLICT), (false, "NoConflict"));
    assert_eq!(d.enforced_limit.as_deref(), Some("600/Minute"));
    assert_eq!(d.events.len(), 1);
    assert!(d.events[0].note.contains("600/Minute") && d.events[0].note.contains("spec.limit"));
}

#[test]
fn an_unchanged_render_writes_nothing_and_publishes_nothing() {
    let r = rendered(&members(), &limit()).expect("render");
    let current = RateLimitPolicyStatus { enforced_limit: Some("600/Minute".into()), ..Default::default() };
    let d = decide_with(Ok(Seen::Ours(Box::new(stored(&r, "u-1")))), Crd::Present, &current);
    assert_eq!(d.write, Write::Nothing);
    assert!(d.events.is_empty());
    assert_eq!(condition(&d, ENFORCED), (true, reason::ENFORCED));
}

#[test]
fn a_hand_edit_is_reverted() {
    let r = rendered(&members(), &limit()).expect("render");
    let mut edited = stored(&r, "u-1");
    edited.spec["rateLimit"]["global"]["rules"][0]["limit"]["requests"] = 1_000_000.into();
    let d = decide_with(Ok(Seen::Ours(Box::new(edited))), Crd::Present, &RateLimitPolicyStatus::default());
    assert!(matches!(d.write, Write::Apply(_)));
    let mut unlabelled = stored(&r, "u-1");
    unlabelled.metadata.labels = None;
    let d = decide_with(Ok(Seen::Ours(Box::new(unlabelled))), Crd::Present, &RateLimitPolicyStatus::default());
    assert!(matches!(d.write, Write::Apply(_)), "the label is put back");
}

#[test]
fn a_foreign_object_is_never_written_and_warned_about_once() {
    let seen = Ok(Seen::Foreign { owner: Some("Team gold".into()) });
    let d = decide_with(seen.clone(), Crd::Present, &RateLimitPolicyStatus::default());
    assert_eq!(d.write, Write::Nothing);
    assert_eq!(condition(&d, ENFORCED), (false, reason::ENFORCEMENT_CONFLICT));
    assert_eq!(condition(&d, ENFORCEMENT_CONFLICT), (true, "NotOwned"));
    assert_eq!(d.enforced_limit, None);
    assert_eq!(d.events.iter().map(|e| e.reason).collect::<Vec<_>>(), vec!["EnforcementConflict"]);
    let current = RateLimitPolicyStatus {
        conditions: crate::runtime::conditions::merge(&[], &d.conditions, None, jiff::Timestamp::UNIX_EPOCH),
        ..Default::default()
    };
    assert!(decide_with(seen, Crd::Present, &current).events.is_empty(), "warned once");
}

#[test]
fn no_crd_no_write_and_why() {
    let d = decide_with(Ok(Seen::Missing), Crd::Missing, &RateLimitPolicyStatus::default());
    assert_eq!((d.write.clone(), condition(&d, ENFORCED)), (Write::Nothing, (false, reason::GATEWAY_CRD_MISSING)));
    let d = decide_with(Ok(Seen::Missing), Crd::Unknown("x".into()), &RateLimitPolicyStatus::default());
    assert_eq!(condition(&d, ENFORCED), (false, reason::GATEWAY_API_UNAVAILABLE));
    let d = invalid_limit("the period \"soon\" is not a duration above 0".into());
    assert_eq!((d.write.clone(), condition(&d, ENFORCED)), (Write::Nothing, (false, reason::INVALID_LIMIT)));
    let d = decide_with(Err("boom".into()), Crd::Present, &RateLimitPolicyStatus::default());
    assert_eq!((d.write.clone(), condition(&d, ENFORCED)), (Write::Nothing, (false, reason::READ_FAILED)));
}

#[test]
fn collisions_rounding_and_too_many_keys_show_in_enforced() {
    let (e, crd, seen, current) = (effective(), Crd::Present, Ok(Seen::Missing), RateLimitPolicyStatus::default());
    let shared = vec![
        Member { name: "x".into(), client_ids: vec!["api-key".into()] },
        Member { name: "y".into(), client_ids: vec!["api-key".into()] },
    ];
    let rounded = GatewayLimit { requests: 26, unit: Unit::Minute, rounded: Some("3/7s rounded".into()) };
    let r = rendered(&shared, &rounded);
    let inputs = |limit, render| Inputs {
        name: "gold",
        header: "x-client-id",
        effective: &e,
        limit,
        render,
        crd: &crd,
        seen: &seen,
        current: &current,
    };
    let d = decide(&inputs(&rounded, &r));
    let c = d.conditions.iter().find(|c| c.type_ == ENFORCED).expect("Enforced");
    assert_eq!((c.status, c.reason), (false, reason::CLIENT_ID_COLLISION));
    assert!(c.message.contains("x, y") && c.message.contains("3/7s rounded"), "{}", c.message);
    assert!(matches!(d.write, Write::Apply(_)), "the other keys are still enforced");
    let r = rendered(&members(), &rounded);
    let d = decide(&inputs(&rounded, &r));
    assert_eq!(condition(&d, ENFORCED), (true, reason::LIMIT_ROUNDED));
    let too_many = Err(Refused::TooManyKeys { keys: 300, rules: 300, max: 256 });
    let d = decide(&inputs(&rounded, &too_many));
    assert_eq!((d.write.clone(), condition(&d, ENFORCED)), (Write::Nothing, (false, reason::TOO_MANY_KEYS)));
}

#[test]
fn a_failed_apply_keeps_the_shown_limit_and_says_why() {
    let d = decide_with(Ok(Seen::Missing), Crd::Present, &RateLimitPolicyStatus::default());
    let current = RateLimitPolicyStatus { enforced_limit: Some("1/Second".into()), ..Default::default() };
    let f = failed(d, reason::REJECTED, "no".into(), &current);
    assert_eq!(condition(&f, ENFORCED), (false, reason::REJECTED));
    assert_eq!(f.enforced_limit.as_deref(), Some("1/Second"));
    assert!(f.events.is_empty());
}
