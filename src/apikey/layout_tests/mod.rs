//! The presets and the template's explicit fields, resolved into a shape; the shape annotation round trip.

use super::*;
use crate::api::apikey::{SecretKeys, SecretTemplate};

fn spec(gateway: Option<GatewayPreset>, template: Option<SecretTemplate>) -> ApiKeySpec {
    ApiKeySpec { gateway, secret_template: template, ..ApiKeySpec::default() }
}

fn resolve(gateway: Option<GatewayPreset>, template: Option<SecretTemplate>) -> Result<Layout, String> {
    Layout::resolve(&spec(gateway, template), "checkout", "checkout-key")
}

#[test]
fn generic_is_keywards_original_format() {
    for g in [None, Some(GatewayPreset::Generic)] {
        let l = resolve(g, None).expect("valid");
        assert_eq!(l.entries, Entries::default());
        assert_eq!(l.entries.allowed(), ["api-key", "previous-api-key", "key-id"]);
        assert!(l.labels.is_empty());
    }
}

#[test]
fn presets_write_only_keys() {
    let envoy = resolve(Some(GatewayPreset::EnvoyGateway), None).expect("valid").entries;
    assert_eq!((envoy.current.as_str(), envoy.previous.as_str()), ("checkout", "checkout-previous"));
    assert_eq!((envoy.key_id.as_deref(), envoy.own), (None, false));
    let kong = resolve(Some(GatewayPreset::Kong), None).expect("valid");
    assert_eq!(kong.entries.allowed(), ["key"], "one credential per Secret, nothing else");
    assert!(kong.entries.own);
    assert_eq!(kong.labels.get(KONG_CREDENTIAL_LABEL).map(String::as_str), Some(KONG_KEY_AUTH));
    let labels = SecretTemplate { labels: [("gw".into(), "a".into())].into(), ..SecretTemplate::default() };
    let authorino = resolve(Some(GatewayPreset::Authorino), Some(labels)).expect("valid");
    assert_eq!(authorino.entries.allowed(), ["api_key"]);
    assert!(authorino.entries.own);
    assert_eq!(authorino.labels.get("gw").map(String::as_str), Some("a"));
}

#[test]
fn explicit_fields_win_over_the_preset() {
    let t = SecretTemplate {
        keys: Some(SecretKeys { current: Some("token".into()), previous: None, key_id: Some(String::new()) }),
        previous: Some(PreviousPlacement::OwnSecret),
        labels: [(KONG_CREDENTIAL_LABEL.into(), "basic-auth".into())].into(),
        ..SecretTemplate::default()
    };
    let l = resolve(Some(GatewayPreset::Kong), Some(t.clone())).expect("valid");
    assert_eq!(l.labels.get(KONG_CREDENTIAL_LABEL).map(String::as_str), Some("basic-auth"));
    let g = resolve(None, Some(t)).expect("valid").entries;
    assert_eq!((g.current.as_str(), g.key_id.as_deref(), g.own), ("token", None, true), "keyId '' leaves it out");
    let same = SecretTemplate { previous: Some(PreviousPlacement::SameSecret), ..SecretTemplate::default() };
    let kong_same = resolve(Some(GatewayPreset::Kong), Some(same)).expect("valid").entries;
    assert_eq!(kong_same.allowed(), ["key", "previous-key"]);
}

#[test]
fn colliding_or_overlong_names_are_refused() {
    let keys = |c: &str, p: &str, k: &str| SecretTemplate {
        keys: Some(SecretKeys { current: Some(c.into()), previous: Some(p.into()), key_id: Some(k.into()) }),
        ..SecretTemplate::default()
    };
    assert!(resolve(None, Some(keys("a", "a", ""))).is_err_and(|e| e.contains("secretTemplate.keys")));
    assert!(resolve(None, Some(keys("a", "b", "b"))).is_err_and(|e| e.contains("keyId")));
    assert!(resolve(None, Some(keys("a/b", "b", ""))).is_err_and(|e| e.contains("keys.current")));
    // An EnvoyGateway entry `<name>-previous` longer than a data key may be.
    let long = "k".repeat(250);
    let err = Layout::resolve(&spec(Some(GatewayPreset::EnvoyGateway), None), &long, &long).expect_err("too long");
    assert!(err.contains("keys.previous"), "{err}");
    let err = Layout::resolve(&spec(Some(GatewayPreset::Kong), None), "a", &long).expect_err("too long");
    assert!(err.contains("secretTemplate.previous"), "{err}");
}

#[test]
fn the_shape_records_entries_and_template() {
    let l = resolve(Some(GatewayPreset::Kong), None).expect("valid");
    let shape = l.shape();
    assert_eq!(Entries::from_shape(Some(&shape)), Some(l.entries.clone()));
    assert_eq!(Entries::from_shape(None), Some(Entries::default()), "a Secret from before shapes");
    assert_eq!(Entries::from_shape(Some("v2 current=a")), None);
    assert_eq!(Entries::from_shape(Some("v1 current= previous=b key-id= previous-in=own template=0")), None);
    let relabelled = SecretTemplate { labels: [("x".into(), "y".into())].into(), ..SecretTemplate::default() };
    let other = resolve(Some(GatewayPreset::Kong), Some(relabelled)).expect("valid");
    assert_ne!(other.shape(), shape, "a label change is a new shape");
    assert_eq!(resolve(Some(GatewayPreset::Kong), None).expect("valid").shape(), shape, "stable");
}
