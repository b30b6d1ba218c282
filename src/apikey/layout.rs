//! The Secret's shape, pure: which data entries hold what, where the previous key lives, and which labels and
//! annotations the template adds, resolved from `spec.gateway` (a preset) and `spec.secretTemplate` (explicit
//! fields win). The shape written is recorded in the annotation [`SHAPE`], so a later reconcile knows where the
//! keys of a Secret written under an older template are, and that the Secret must be rewritten in the new shape.
//!
//! Presets follow the gateways' own formats (docs/gateways.md has the details and what was verified how):
//! - Envoy Gateway, `SecurityPolicy.spec.apiKeyAuth.credentialRefs`: every data entry of each referenced Secret is
//!   a credential, the entry's name being the client id (`internal/gatewayapi/securitypolicy.go`,
//!   `buildAPIKeyAuth`, github.com/envoyproxy/gateway v1.9.1; <https://gateway.envoyproxy.io/docs/tasks/security/apikey-auth/>).
//!   So `data` holds the current key (client id = the ApiKey's name) and, during the grace period only, the previous
//!   key (client id `<name>-previous`), and nothing else.
//! - Kong Ingress Controller 3.x key-auth credentials: a Secret labelled `konghq.com/credential: key-auth` whose
//!   data holds `key` and no other entry, one credential per Secret, listed by name in the KongConsumer's
//!   `credentials` (<https://developer.konghq.com/kubernetes-ingress-controller/reference/custom-resources/#kongconsumer>,
//!   <https://docs.konghq.com/kubernetes-ingress-controller/latest/reference/credential-type-labels/>).
//! - Authorino `apiKey` identity: Secrets selected by `apiKey.selector` labels, one key per Secret in `api_key`
//!   (<https://docs.kuadrant.io/latest/authorino/docs/features/#api-key-authenticationapikey>,
//!   `pkg/evaluators/identity/api_key.go` of github.com/Kuadrant/authorino v0.20).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use crate::api::ApiKeySpec;
use crate::api::apikey::{GatewayPreset, PreviousPlacement};

/// Annotation recording the shape a Secret was written in.
pub const SHAPE: &str = "keyward.dev/shape";
/// Suffix of the Secret that holds the previous key with [`PreviousPlacement::OwnSecret`].
pub const PREVIOUS_SUFFIX: &str = "-previous";
/// Kong's credential-type label and its value for key-auth.
pub const KONG_CREDENTIAL_LABEL: &str = "konghq.com/credential";
pub const KONG_KEY_AUTH: &str = "key-auth";
/// Longest Secret name and data key.
const MAX_NAME: usize = 253;

/// Where the keys sit in a Secret: the data entries and the previous key's placement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entries {
    /// Entry of the current key (also the previous key's entry in its own Secret).
    pub current: String,
    /// Entry of the previous key in the same Secret (unused with `own`).
    pub previous: String,
    /// Entry of the fingerprint, if written.
    pub key_id: Option<String>,
    /// Whether the previous key lives in `<secret>-previous`.
    pub own: bool,
}

impl Default for Entries {
    /// Keyward's format before shapes existed (and the Generic preset's).
    fn default() -> Self {
        Entries {
            current: super::book::DATA_KEY.to_string(),
            previous: super::book::DATA_PREVIOUS_KEY.to_string(),
            key_id: Some(super::book::DATA_KEY_ID.to_string()),
            own: false,
        }
    }
}

/// The whole shape of the Secret(s) of an ApiKey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub entries: Entries,
    /// The template's labels and annotations, with the preset's label.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Layout {
    /// The shape for `spec` of the ApiKey `apikey_name` whose Secret is `secret_name`, or why it cannot be written
    /// (entry names that collide, or names too long for the API).
    pub fn resolve(spec: &ApiKeySpec, apikey_name: &str, secret_name: &str) -> Result<Layout, String> {
        let preset = spec.gateway.unwrap_or_default();
        let template = spec.secret_template.clone().unwrap_or_default();
        let mut entries = preset_entries(preset, apikey_name);
        let mut labels = BTreeMap::new();
        if preset == GatewayPreset::Kong {
            labels.insert(KONG_CREDENTIAL_LABEL.to_string(), KONG_KEY_AUTH.to_string());
        }
        labels.extend(template.labels);
        if let Some(k) = template.keys {
            entries.current = k.current.unwrap_or(entries.current);
            entries.previous = k.previous.unwrap_or(entries.previous);
            entries.key_id = k.key_id.map(|id| Some(id).filter(|id| !id.is_empty())).unwrap_or(entries.key_id);
        }
        if let Some(p) = template.previous {
            entries.own = p == PreviousPlacement::OwnSecret;
        }
        entries.check(secret_name)?;
        Ok(Layout { entries, labels, annotations: template.annotations })
    }

    /// A layout with the entries a Secret was written in and no template metadata (to empty a Secret whose spec
    /// no longer resolves).
    pub fn written(entries: Entries) -> Layout {
        Layout { entries, labels: BTreeMap::new(), annotations: BTreeMap::new() }
    }

    /// The value of the [`SHAPE`] annotation: the entries, the placement and a digest of the template metadata.
    pub fn shape(&self) -> String {
        let mut h = Sha256::new();
        for (tag, map) in [("l", &self.labels), ("a", &self.annotations)] {
            for (k, v) in map {
                for part in [tag, k.as_str(), v.as_str()] {
                    h.update((part.len() as u64).to_be_bytes());
                    h.update(part.as_bytes());
                }
            }
        }
        let digest: String = h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect();
        let e = &self.entries;
        format!(
            "v1 current={} previous={} key-id={} previous-in={} template={digest}",
            e.current,
            e.previous,
            e.key_id.as_deref().unwrap_or_default(),
            if e.own { "own" } else { "same" },
        )
    }
}

impl Entries {
    /// The entries a shape annotation records; the default (Keyward's original format) without one, `None` for an
    /// unreadable one.
    pub fn from_shape(shape: Option<&str>) -> Option<Entries> {
        let Some(shape) = shape else { return Some(Entries::default()) };
        let mut words = shape.split(' ');
        if words.next() != Some("v1") {
            return None;
        }
        let fields: BTreeMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
        let e = Entries {
            current: fields.get("current")?.to_string(),
            previous: fields.get("previous")?.to_string(),
            key_id: Some(fields.get("key-id")?.to_string()).filter(|k| !k.is_empty()),
            own: match *fields.get("previous-in")? {
                "own" => true,
                "same" => false,
                _ => return None,
            },
        };
        Some(e).filter(|e| !e.current.is_empty() && !e.previous.is_empty())
    }

    /// The entries the main Secret may hold: nothing else belongs in its data.
    pub fn allowed(&self) -> Vec<&str> {
        let mut names = vec![self.current.as_str()];
        if !self.own {
            names.push(self.previous.as_str());
        }
        names.extend(self.key_id.as_deref());
        names
    }

    fn check(&self, secret_name: &str) -> Result<(), String> {
        let data_key = |n: &str| {
            !n.is_empty() && n.len() <= MAX_NAME && n.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c))
        };
        for (field, name) in [("current", &self.current), ("previous", &self.previous)] {
            if !data_key(name) {
                return Err(format!(
                    "secretTemplate.keys.{field}: the entry name {name:?} is not a Secret data key (letters, digits, \
                     '-', '_', '.'; at most 253 characters)"
                ));
            }
        }
        if let Some(id) = self.key_id.as_deref().filter(|id| !data_key(id)) {
            return Err(format!("secretTemplate.keys.keyId: the entry name {id:?} is not a Secret data key"));
        }
        let same = |a: &str| a == self.current || (!self.own && a == self.previous);
        if !self.own && self.current == self.previous {
            return Err("secretTemplate.keys: current and previous name the same entry".into());
        }
        if self.key_id.as_deref().is_some_and(same) {
            return Err("secretTemplate.keys.keyId names the same entry as a key".into());
        }
        if self.own && secret_name.len() + PREVIOUS_SUFFIX.len() > MAX_NAME {
            return Err(format!(
                "secretTemplate.previous: OwnSecret needs a Secret named {secret_name}{PREVIOUS_SUFFIX}, longer than \
                 253 characters; use a shorter spec.secretName"
            ));
        }
        Ok(())
    }
}

/// The entries a preset writes before the template's explicit fields.
fn preset_entries(preset: GatewayPreset, apikey_name: &str) -> Entries {
    let only = |current: &str, previous: &str, own: bool| Entries {
        current: current.to_string(),
        previous: previous.to_string(),
        key_id: None,
        own,
    };
    match preset {
        GatewayPreset::Generic => Entries::default(),
        GatewayPreset::EnvoyGateway => only(apikey_name, &format!("{apikey_name}{PREVIOUS_SUFFIX}"), false),
        // NB: with the previous key in its own Secret, `previous` is only used if the template asks for SameSecret.
        GatewayPreset::Kong => only("key", "previous-key", true),
        GatewayPreset::Authorino => only("api_key", "previous_api_key", true),
    }
}

/// The name of the Secret that holds the previous key with [`PreviousPlacement::OwnSecret`].
pub fn previous_secret_name(secret_name: &str) -> String {
    format!("{secret_name}{PREVIOUS_SUFFIX}")
}

#[cfg(test)]
#[path = "layout_tests/mod.rs"]
mod tests;
