//! The `ApiKey` resource: one generated key kept in a Secret that Keyward owns, with its rotation schedule.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::bounds::{self, DNS_SUBDOMAIN_PATTERN};
use super::common::{Condition, GoDuration, Time};

/// Annotation on an ApiKey that requests one rotation now; each distinct value rotates once.
pub const ROTATE_ANNOTATION: &str = "keyward.dev/rotate";

/// An API key that Keyward generates, stores in a Secret it owns, and rotates on a schedule.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "keyward.dev",
    version = "v1alpha1",
    kind = "ApiKey",
    plural = "apikeys",
    shortname = "ak",
    category = "keyward",
    namespaced,
    doc = "An API key that Keyward generates, keeps in a Secret it owns, and rotates on a schedule.",
    status = "ApiKeyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    // Why a key is not Ready (InvalidSpec, Suspended, SecretConflict, ...) without `kubectl describe`.
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Key ID","type":"string","jsonPath":".status.keyId"}"#,
    // NB: a "date" column renders future times as <invalid> in kubectl, so the next rotation is shown as text.
    printcolumn = r#"{"name":"Next Rotation","type":"string","jsonPath":".status.nextRotationTime"}"#,
    printcolumn = r#"{"name":"Utilization","type":"number","jsonPath":".status.usage.utilization"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // NB: a rename would leave the old Secret holding a live key that suspension and expiry no longer reach.
    validation = kube::core::Rule::new(
        "(has(self.spec.secretName) ? self.spec.secretName : self.metadata.name) == \
         (has(oldSelf.spec.secretName) ? oldSelf.spec.secretName : oldSelf.metadata.name)"
    )
    .message("spec.secretName is immutable: create a new ApiKey for another Secret (a rename would leave the old Secret's key valid)"),
    // NB: released Authorino selects key Secrets by label only (`apiKey.selector`); without a label it finds none.
    validation = kube::core::Rule::new(
        "!has(self.spec.gateway) || self.spec.gateway != 'Authorino' || \
         (has(self.spec.secretTemplate) && has(self.spec.secretTemplate.labels) && size(self.spec.secretTemplate.labels) > 0)"
    )
    .message("spec.gateway Authorino needs spec.secretTemplate.labels: the label the AuthConfig's apiKey.selector selects the key Secrets by"),
    validation = kube::core::Rule::new(
        "!has(self.spec.gateway) || self.spec.gateway == 'Generic' || !has(self.spec.secretTemplate) || \
         !has(self.spec.secretTemplate.keys) || !has(self.spec.secretTemplate.keys.keyId) || self.spec.secretTemplate.keys.keyId == ''"
    )
    .message("spec.secretTemplate.keys.keyId must be empty with a gateway preset: the gateway would take the fingerprint entry for a credential")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeySpec {
    /// Name of the Secret that holds the key, in the ApiKey's namespace. Defaults to the ApiKey's name.
    /// Keyward never overwrites a Secret of this name that it does not own. A DNS-1123 subdomain (lower-case
    /// letters, digits, `-` and `.`), at most 253 characters: it becomes part of an API path. Immutable: a rename
    /// would leave the old Secret's key valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub secret_name: Option<String>,

    /// How the key is generated and encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<KeyFormat>,

    /// When the key rotates on its own. Without it the key rotates only on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<Rotation>,

    /// RFC 3339 time after which the key material is removed and the key reports Expired; from 1970 up to (not
    /// including) the year 3000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = bounds::time_in_range("expiresAt"))]
    pub expires_at: Option<Time>,

    /// true removes the key material at once (revocation); setting it back to false issues a fresh key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<bool>,

    /// RateLimitPolicy in the same namespace that meters this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_policy_ref: Option<LocalObjectReference>,

    /// Labels and annotations copied onto the Secret, e.g. the label a gateway selects its keys by; the data
    /// entry names; where the previous key lives during the grace period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_template: Option<SecretTemplate>,

    /// The gateway that reads the Secret: fills `secretTemplate`'s defaults in that gateway's format (explicit
    /// fields win). `Generic` (default): entries `api-key`, `previous-api-key`, `key-id` in one Secret.
    /// `EnvoyGateway`: entries `<ApiKey name>` and `<ApiKey name>-previous`, nothing else. `Kong`: label
    /// `konghq.com/credential: key-auth`, entry `key`, previous key in its own Secret. `Authorino`: entry
    /// `api_key`, previous key in its own Secret (needs `secretTemplate.labels` for the AuthConfig's selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayPreset>,

    /// Workloads in the same namespace restarted after each rotation (pod-template annotation
    /// keyward.dev/restartedAt), debounced so that a burst of rotations causes one restart.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rollout_restart: Vec<RolloutTarget>,
}

/// How a key is built: `<prefix><encoded random bytes><6-character base62 CRC32 checksum>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyFormat {
    /// Identifying prefix such as `kw_live_`, so secret scanners can find leaked keys: letters, digits and `_`,
    /// at most 16 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16), regex(pattern = r"^[A-Za-z0-9_]*$"))]
    pub prefix: Option<String>,

    /// Number of random bytes drawn from the operating system's CSPRNG: 16 to 128, default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 128))]
    pub entropy_bytes: Option<i32>,

    /// How the random bytes are encoded: base62 (default), base64url or hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<KeyEncoding>,
}

/// Encoding of a key's random bytes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum KeyEncoding {
    /// Letters and digits only (the default): safe in URLs, headers and shell words.
    #[default]
    #[serde(rename = "base62")]
    Base62,
    /// RFC 4648 URL-safe base64 without padding.
    #[serde(rename = "base64url")]
    Base64Url,
    /// Lower-case hexadecimal.
    #[serde(rename = "hex")]
    Hex,
}

/// When a key rotates: an interval or a cron schedule (at most one of them), plus the overlap in which the
/// previous key stays valid.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.interval) && has(self.schedule))")
    .message("rotation: set at most one of rotation.interval and rotation.schedule"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.timeZone) || has(self.schedule)")
    .message("rotation.timeZone is only allowed together with rotation.schedule"))]
#[x_kube(validation = bounds::shorter_than(("gracePeriod", "rotation.gracePeriod"), ("interval", "rotation.interval"),
    "a rotation never cuts the previous key's grace period short, so with a grace period as long as the interval every rotation would wait"))]
pub struct Rotation {
    /// Rotate this long after the previous rotation, e.g. `720h`: above 0s, at most 8760h (a key that lives
    /// longer than a year without rotating is what Keyward exists to prevent). The operator may set a higher
    /// minimum (`keyward run --min-rotation-interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = bounds::duration_positive_at_most("rotation.interval", bounds::MAX_ROTATION_INTERVAL, "rotate at least once a year"))]
    pub interval: Option<GoDuration>,

    /// Rotate on this 5-field cron schedule (minute hour day-of-month month day-of-week), e.g. `0 3 * * 1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = kube::core::Rule::new(r"self.matches('^\\s*\\S+(\\s+\\S+){4}\\s*$')")
        .message("rotation.schedule must be a cron expression of exactly five fields: minute hour day-of-month month day-of-week"))]
    pub schedule: Option<String>,

    /// IANA time zone the schedule is read in, e.g. `Europe/Berlin`; default `UTC`. Only with `schedule`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$"))]
    pub time_zone: Option<String>,

    /// How long the previous key stays valid after a rotation (in the Secret, or its own Secret with
    /// `secretTemplate.previous: OwnSecret`); `0s` drops it at once; at most 8760h (a year: longer keeps a possibly
    /// leaked key valid past any sane rotation); shorter than `interval`. Default `24h`, or half the time until the
    /// next scheduled rotation when that is sooner. A rotation never cuts a grace period short: one that comes due
    /// (asked for or scheduled) while the previous key is in its grace period waits for its end (Ready reason
    /// `RotationDeferred`). The operator may set a minimum (`keyward run --min-grace-period`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = bounds::duration_at_most("rotation.gracePeriod", bounds::MAX_GRACE_PERIOD, "the previous key stays valid for at most a year"))]
    pub grace_period: Option<GoDuration>,

    /// Remove the previous key before its grace period ends once its RateLimitPolicy has seen no traffic on it for
    /// this long, e.g. `1h`. Needs usage labelled by key id (the previous key's `keyId`); with no usage data for the
    /// previous key (source down, usage labelled by name), nothing is retired early. Above 0s, at most 8760h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = bounds::duration_positive_at_most("rotation.retirePreviousWhenIdle", bounds::MAX_GRACE_PERIOD, "a year"))]
    pub retire_previous_when_idle: Option<GoDuration>,

    /// Keep the previous key past its grace period while clients still use it, up to `max` after the rotation:
    /// condition `PreviousKeyInUse=True` with the rate and a Warning event say so. Needs usage labelled by key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extend_grace_while_in_use: Option<GraceExtension>,

    /// Random delay of up to this long added to each scheduled rotation, spreading keys that share a schedule;
    /// at most 24h (a day spreads any herd; more would make the schedule meaningless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = bounds::duration_at_most("rotation.jitter", bounds::MAX_JITTER, "a day spreads any herd"))]
    pub jitter: Option<GoDuration>,
}

/// How far the grace period may be extended while the previous key is in use.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
pub struct GraceExtension {
    /// The latest the previous key may stay, counted from the rotation, e.g. `72h`: above 0s, at most 8760h.
    #[x_kube(validation = bounds::duration_positive_at_most("rotation.extendGraceWhileInUse.max", bounds::MAX_GRACE_PERIOD, "a year"))]
    pub max: GoDuration,
}

/// A reference to an object by name in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct LocalObjectReference {
    /// Name of the object: a DNS-1123 subdomain, at most 253 characters.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// A gateway whose Secret format Keyward writes (see docs/gateways.md for the upstream formats each follows).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum GatewayPreset {
    /// Keyward's own format: `api-key`, `previous-api-key`, `key-id` in one Secret.
    #[default]
    Generic,
    /// Envoy Gateway `SecurityPolicy.spec.apiKeyAuth.credentialRefs`: every data entry is a client id → key.
    EnvoyGateway,
    /// Kong Ingress Controller 3.x key-auth credential: label `konghq.com/credential: key-auth`, entry `key`.
    Kong,
    /// Authorino `apiKey` identity: Secrets selected by label, one `api_key` each.
    Authorino,
}

/// Where the previous key lives during the grace period.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PreviousPlacement {
    /// In the same Secret, under `keys.previous`.
    SameSecret,
    /// In its own Secret `<secretName>-previous` (same labels, annotations and type), under `keys.current`;
    /// deleted when the grace period ends.
    OwnSecret,
}

/// Names of the Secret's data entries. Each a Secret data key (letters, digits, `-`, `_`, `.`), at most 253
/// characters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.current) || !has(self.previous) || self.current != self.previous"
).message("secretTemplate.keys.current and secretTemplate.keys.previous must differ"))]
pub struct SecretKeys {
    /// Entry of the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub current: Option<String>,
    /// Entry of the previous key during the grace period (with `previous: SameSecret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub previous: Option<String>,
    /// Entry of the current key's fingerprint; `""` leaves it out (it is in the annotations and the status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = r"^[-._a-zA-Z0-9]*$"))]
    pub key_id: Option<String>,
}

/// Metadata copied onto the Secret Keyward writes, and its shape.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
pub struct SecretTemplate {
    /// Labels added to the Secret (Keyward's own labels win on conflict): at most 64, keys at most 317
    /// characters, values at most 63.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = bounds::MAX_TEMPLATE_ENTRIES))]
    #[x_kube(validation = bounds::map_lengths("secretTemplate.labels", bounds::MAX_LABEL_VALUE_LENGTH))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret (Keyward's own annotations win on conflict): at most 64, keys at most 317
    /// characters, values at most 4096.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = bounds::MAX_TEMPLATE_ENTRIES))]
    #[x_kube(validation = bounds::map_lengths("secretTemplate.annotations", bounds::MAX_ANNOTATION_VALUE_LENGTH))]
    pub annotations: BTreeMap<String, String>,
    /// Names of the data entries; defaults from `spec.gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<SecretKeys>,
    /// Where the previous key lives during the grace period; default from `spec.gateway` (`SameSecret` for
    /// Generic and EnvoyGateway, `OwnSecret` for Kong and Authorino).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousPlacement>,
}

/// A workload restarted after each rotation so that it picks up the new key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct RolloutTarget {
    /// Kind of the workload: Deployment, StatefulSet or DaemonSet.
    pub kind: RolloutKind,
    /// Name of the workload in the ApiKey's namespace: a DNS-1123 subdomain, at most 253 characters.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// Workload kinds that can be restarted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// What Keyward observed and did for an ApiKey. Never holds key material.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready (reasons KeyIssued, Suspended, Expired, SecretConflict, InvalidSpec), NearLimit and Exhausted.
    /// A map keyed by `type`, so the ApiKey controller (Ready) and the RateLimitPolicy controller (NearLimit,
    /// Exhausted) each own their own entries under server-side apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Fingerprint of the current key: the first 12 hex characters of its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,

    /// Fingerprint of the previous key while it is still valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,

    /// When the current key was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,

    /// When the key rotates next, if it rotates on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<Time>,

    /// When the previous key stops being valid and is removed from the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_expires_at: Option<Time>,

    /// How many times the key has been rotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_count: Option<i64>,

    /// The last value of the keyward.dev/rotate annotation that was acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotate_request: Option<String>,

    /// The key's usage as measured by its RateLimitPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<KeyUsage>,
}

/// A key's measured usage against its limit.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyUsage {
    /// Requests per second observed for this key.
    pub requests_per_second: f64,
    /// The key's limit in requests per second.
    pub limit: f64,
    /// requestsPerSecond divided by limit (1.0 is the limit).
    pub utilization: f64,
    /// When the usage was measured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
    /// Traffic on the previous key, during its grace period, when usage is labelled by key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key: Option<PreviousKeyUsage>,
    /// Under a calendar limit (`limit.window: Calendar`): requests used in the current window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used: Option<i64>,
    /// Under a calendar limit: requests left in the current window (the window's limit minus `used`, at least 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remaining: Option<i64>,
    /// Under a calendar limit: when the current window started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_start: Option<Time>,
    /// Under a calendar limit: when the current window ends and the quota resets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resets_at: Option<Time>,
}

/// Traffic on a key's previous key, as its RateLimitPolicy last saw it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PreviousKeyUsage {
    /// The previous key's fingerprint the figures are about.
    pub key_id: String,
    /// Requests per second on it.
    pub requests_per_second: f64,
    /// Since when no traffic has been seen on it (absent while it has traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<Time>,
}
