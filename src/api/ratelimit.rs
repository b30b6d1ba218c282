//! The `RateLimitPolicy` resource: the limit of every key that references it, where their usage is read from,
//! and how the gateway in front of them scales.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::bounds::{self, API_VERSION_PATTERN, DNS_SUBDOMAIN_PATTERN, KIND_PATTERN};
use super::common::{Condition, GoDuration, RequestRate, Time};

/// A rate limit shared by the ApiKeys that reference it, with usage monitoring and gateway scaling.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keyward.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    plural = "ratelimitpolicies",
    shortname = "rlp",
    category = "keyward",
    namespaced,
    doc = "A rate limit shared by the ApiKeys that reference it, with usage monitoring and gateway scaling.",
    status = "RateLimitPolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Limit","type":"string","jsonPath":".status.effectiveLimit"}"#,
    printcolumn = r#"{"name":"Usage","type":"number","jsonPath":".status.observedUsage"}"#,
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.scaling.targetRef.name"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".status.currentReplicas"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.temporaryOverrides) || self.temporaryOverrides.all(o, \
    (has(self.limit.window) && self.limit.window == 'Calendar') ? o.period == self.limit.period : o.period != '1mo')")
    .message("temporaryOverrides[].period: under limit.window Calendar an override counts in the limit's windows, so its period must equal limit.period; 1mo needs limit.window Calendar"))]
pub struct RateLimitPolicySpec {
    /// The limit of each key that references this policy, e.g. 1000 requests per `1m`, counted over a rolling
    /// period (the default) or per calendar hour, day or month (`window: Calendar`).
    pub limit: Limit,

    /// Temporary limit boosts: the first one whose `until` is still ahead replaces `limit`, and the policy reverts
    /// on its own when it ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub temporary_overrides: Vec<TemporaryOverride>,

    /// Utilization (usage ÷ limit) at which a key is marked NearLimit: greater than 0, at most 1; default 0.8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1.0), extend("minimum" = 0.0, "exclusiveMinimum" = true))]
    pub near_limit_ratio: Option<f64>,

    /// Where each key's usage is read from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageSource>,

    /// Scale the gateway in front of the keys with their total usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<Scaling>,

    /// What happens to a key that stays `Exhausted` too long: by default nothing beyond the condition and event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_exhausted: Option<OnExhausted>,

    /// Make the gateway enforce the limit: Keyward renders and owns one Envoy Gateway `BackendTrafficPolicy` (named
    /// like this policy) that limits each member key, by the client id Envoy Gateway's API-key authentication
    /// forwards, to the limit in force (an active temporary override included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce: Option<Enforce>,
}

/// The limit of each key: requests per period, over a rolling period or aligned to the clock.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.period != '1mo' || (has(self.window) && self.window == 'Calendar')")
    .message("limit.period 1mo (a calendar month) needs limit.window: Calendar"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.window) || self.window != 'Calendar' || self.period in ['1h', '24h', '1mo']")
    .message("limit.window Calendar counts per clock hour, day or month: limit.period must be 1h, 24h or 1mo"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.timeZone) || (has(self.window) && self.window == 'Calendar')")
    .message("limit.timeZone applies to limit.window: Calendar only"))]
pub struct Limit {
    /// Requests allowed in each period; at least 1.
    #[schemars(range(min = 1))]
    pub requests: i64,
    /// The period the requests are counted over, as a duration such as `1s`, `1m` or `1h` (above 0s, at most
    /// 8760h), or `1mo`, a calendar month, with `window: Calendar`.
    #[schemars(schema_with = "limit_period_schema")]
    #[x_kube(validation = bounds::duration_positive_at_most("limit.period", bounds::MAX_RATE_PERIOD, "a rate is counted over at most a year"))]
    pub period: GoDuration,
    /// `Rolling` (the default): requests are counted over the last `period`. `Calendar`: over the current clock
    /// hour, day or month in `timeZone` (`period` is `1h`, `24h` or `1mo`); each key's status then reports
    /// `usage.used`, `usage.remaining` and `usage.resetsAt`, and a key is `Exhausted` once it used the window's
    /// requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<Window>,
    /// IANA time zone the calendar windows follow, e.g. `Europe/Berlin`; default `UTC`. Only with `window:
    /// Calendar`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_+/-]*$"))]
    pub time_zone: Option<String>,
}

impl Limit {
    /// The rate, for code that treats the limit as requests per period (a `1mo` period has no fixed length).
    pub fn rate(&self) -> RequestRate {
        RequestRate { requests: self.requests, period: self.period.clone() }
    }

    /// Requests per second over a fixed period; `None` for `1mo` and for a period that cannot be parsed.
    pub fn per_second(&self) -> Option<f64> {
        self.rate().per_second()
    }

    /// Whether the windows are aligned to the clock.
    pub fn is_calendar(&self) -> bool {
        self.window == Some(Window::Calendar)
    }
}

/// The period of a limit: a duration, or `1mo` (a calendar month).
pub const CALENDAR_MONTH: &str = "1mo";

fn limit_period_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let duration = bounds::SCHEMA_DURATION_PATTERN.trim_start_matches('^').trim_end_matches('$');
    schemars::json_schema!({
        "type": "string",
        "pattern": format!("^({duration}|{CALENDAR_MONTH})$"),
        "maxLength": bounds::DURATION_MAX_LENGTH,
    })
}

/// How a limit's requests are counted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum Window {
    /// Over the last `period`, whenever that is.
    #[default]
    Rolling,
    /// Over the current clock hour, day or month in `timeZone`: the quota resets at its start.
    Calendar,
}

/// The gateway that enforces a policy's limit, and how.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Enforce {
    /// The gateway: `EnvoyGateway` (the default and only one so far).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<EnforcingGateway>,
    /// The HTTPRoute or Gateway, in the policy's namespace, the rendered BackendTrafficPolicy attaches to.
    pub target_ref: EnforceTargetRef,
    /// The header carrying the client id that Envoy Gateway's API-key authentication forwards
    /// (`SecurityPolicy.spec.apiKeyAuth.forwardClientIDHeader`), e.g. `x-client-id`. Limits are matched on it,
    /// never on the key itself.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9-]*$"))]
    pub client_id_header: String,
    /// `Global` (the default): one count per key across every Envoy replica, through Envoy Gateway's rate-limit
    /// service. `Local`: each Envoy replica counts on its own, so a key gets the limit once per replica.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<EnforceType>,
}

/// The gateway that enforces a limit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum EnforcingGateway {
    /// Envoy Gateway: a `gateway.envoyproxy.io/v1alpha1` BackendTrafficPolicy.
    #[default]
    EnvoyGateway,
}

/// Where Envoy counts.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum EnforceType {
    /// One count per key across all replicas (Envoy Gateway's rate-limit service).
    #[default]
    Global,
    /// Each Envoy replica counts on its own.
    Local,
}

/// The Gateway API object a BackendTrafficPolicy attaches to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct EnforceTargetRef {
    /// `HTTPRoute` or `Gateway`.
    pub kind: EnforceTargetKind,
    /// Its name, in the policy's namespace.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// The kinds a BackendTrafficPolicy can target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EnforceTargetKind {
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    Gateway,
}

/// The action on a key that is `Exhausted` without a break for `after`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnExhausted {
    /// `None` (the default) or `Suspend`: the key's material is removed as for `suspended: true`, with a Warning
    /// event `SuspendedForAbuse` and condition `SuspendedForAbuse=True`. It stays suspended until a person clears
    /// it: `kubectl annotate apikey NAME keyward.dev/abuse-cleared=<the current time, RFC 3339> --overwrite`.
    pub action: ExhaustedAction,
    /// How long a key must stay `Exhausted` without a break before the action; default `5m`; above 0s, at most
    /// 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = bounds::duration_positive_at_most("onExhausted.after", bounds::MAX_USAGE_INTERVAL, "a day of abuse is long enough"))]
    pub after: Option<GoDuration>,
}

/// What `onExhausted` does.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ExhaustedAction {
    /// Nothing beyond `Exhausted` and its event.
    #[default]
    None,
    /// Suspend the key (remove its material) until a person clears it.
    Suspend,
}

/// A limit that applies instead of `limit` until a point in time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemporaryOverride {
    /// Requests allowed in each period while the override is active; at least 1.
    #[schemars(range(min = 1))]
    pub requests: i64,
    /// The period the requests are counted over, e.g. `1m`: above 0s, at most 8760h; or `1mo` under a calendar
    /// `limit`. Under `limit.window: Calendar` the override counts in the same windows as the limit.
    #[schemars(schema_with = "limit_period_schema")]
    #[x_kube(validation = bounds::duration_positive_at_most("temporaryOverrides[].period", bounds::MAX_RATE_PERIOD, "a rate is counted over at most a year"))]
    pub period: GoDuration,
    /// RFC 3339 time at which the override ends and the policy reverts to `limit`; from 1970 up to (not
    /// including) the year 3000.
    #[x_kube(validation = bounds::time_in_range("temporaryOverrides[].until"))]
    pub until: Time,
    /// Why the limit was raised (kept as a record; shown in events).
    #[schemars(length(min = 1, max = 256))]
    pub reason: String,
}

/// The source of per-key usage: a Prometheus query or a direct scrape of the gateway's metrics, not both.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.prometheus) && has(self.scrape))")
    .message("usage: set at most one of usage.prometheus and usage.scrape"))]
pub struct UsageSource {
    /// Read usage with a PromQL instant query through the Prometheus HTTP API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,

    /// Read the Prometheus text format from the gateway's metrics endpoints and turn counter deltas into rates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrape: Option<ScrapeSource>,

    /// Label that carries a key's identity, its ApiKey name or its keyId; default `api_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[a-zA-Z_][a-zA-Z0-9_]*$"))]
    pub key_label: Option<String>,

    /// How often usage is polled; default `15s`; above 0s, at most 24h (usage older than a day says nothing about
    /// a key being near its limit now). The operator may set a higher minimum (`keyward run
    /// --min-usage-interval`, default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = bounds::duration_positive_at_most("usage.interval", bounds::MAX_USAGE_INTERVAL, "poll at least once a day"))]
    pub interval: Option<GoDuration>,
}

/// A Prometheus server and the query that yields requests per second by key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.tls) || self.address.startsWith('https://')")
    .message("usage.prometheus.tls needs an https:// usage.prometheus.address"))]
pub struct PrometheusSource {
    /// Base URL of the Prometheus server, e.g. `http://prometheus.monitoring:9090`: http or https, and no
    /// credentials in the URL (`user:pass@` is refused; credentials belong in a Secret).
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://"))]
    #[x_kube(validation = bounds::credential_free_url("usage.prometheus.address"))]
    pub address: String,
    /// PromQL instant query whose result is requests per second by key, e.g.
    /// `sum by (api_key) (rate(gateway_requests_total[1m]))`.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// Under `limit.window: Calendar`: PromQL instant query whose result is the requests each key used in the
    /// current window, with the placeholder `$window` for the time since the window started (e.g. `3600s`), e.g.
    /// `sum by (api_key) (increase(gateway_requests_total[$window]))`. Without it, `query` is integrated over the
    /// window with a subquery (`sum_over_time((<query>)[$window:<step>]) * <step>`, step = `usage.interval`, raised so a
    /// window holds at most 10,000 steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    #[x_kube(validation = kube::core::Rule::new("self.contains('$window')")
        .message("usage.prometheus.usedQuery must contain $window, the placeholder for the time since the window started"))]
    pub used_query: Option<String>,
    /// Credentials for a Prometheus API that requires them (a bearer token or basic auth), each read from a Secret
    /// in the policy's namespace. They are sent only to `address`, never logged or shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<PrometheusAuth>,
    /// TLS settings for an https `address`: a private CA, the server name to verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SourceTls>,
    /// Extra request headers, e.g. `X-Scope-OrgID` for a multi-tenant Mimir, Cortex or Thanos: at most 16.
    /// `Authorization`, `Host`, `Cookie` and hop-by-hop headers cannot be set (credentials go in `auth`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HttpHeader>,
}

/// How Keyward authenticates to Prometheus: exactly one of a bearer token and basic auth.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.bearerToken) != has(self.basic)")
    .message("usage.prometheus.auth: set exactly one of bearerToken and basic"))]
pub struct PrometheusAuth {
    /// The token sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<SecretKeyRef>,
    /// A user name and password sent as HTTP basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
}

/// HTTP basic auth, both parts read from Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct BasicAuth {
    /// Where the user name is.
    pub username: SecretKeyRef,
    /// Where the password is.
    pub password: SecretKeyRef,
}

/// A key of a Secret in the policy's namespace. The user who creates the policy must be allowed to read that
/// Secret (checked by the chart's admission policy), since its value is sent to the policy's address.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// A key of a ConfigMap in the policy's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// Key in the ConfigMap's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// TLS settings of a usage source.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceTls {
    /// PEM CA certificates the server's certificate must chain to, instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaSource>,
    /// The name the server's certificate must carry, when it differs from the host of `address` (e.g. an
    /// address by IP); at most 253 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub server_name: Option<String>,
    /// Skip verifying the server's certificate: anyone on the path can then read the credentials and forge the
    /// usage. For tests only; the policy reports `SourceVerified=False` while it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// Where a CA bundle is: exactly one of a ConfigMap key and a Secret key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.configMapKeyRef) != has(self.secretKeyRef)")
    .message("usage.prometheus.tls.ca: set exactly one of configMapKeyRef and secretKeyRef"))]
pub struct CaSource {
    /// A ConfigMap key holding the PEM bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<ConfigMapKeyRef>,
    /// A Secret key holding the PEM bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeyRef>,
}

/// An extra HTTP request header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new(
    "!(self.name.lowerAscii() in ['authorization', 'proxy-authorization', 'host', 'cookie', 'connection', \
     'content-length', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'keep-alive', 'proxy-connection'])")
    .message("usage.prometheus.headers[].name: Authorization, Host, Cookie and hop-by-hop headers cannot be set; credentials go in usage.prometheus.auth"))]
pub struct HttpHeader {
    /// Header name, e.g. `X-Scope-OrgID`: letters, digits and `-`, at most 128 characters.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9-]*$"))]
    pub name: String,
    /// Header value: visible ASCII and spaces, at most 1024 characters (not a place for secrets: it is part of
    /// the spec).
    #[schemars(length(max = 1024), regex(pattern = r"^[\x20-\x7E]*$"))]
    pub value: String,
}

/// Metrics endpoints read directly, for gateways without a Prometheus server: a fixed list of URLs, or every ready
/// endpoint of a Service (exactly one of the two).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("has(self.urls) != has(self.service)")
    .message("usage.scrape: set exactly one of usage.scrape.urls and usage.scrape.service"))]
pub struct ScrapeSource {
    /// URLs of the gateway's metrics endpoints (every replica); counters are summed across them. At most 64,
    /// each http or https with no credentials in the URL (`user:pass@` is refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 64), inner(length(max = 2048), regex(pattern = r"^https?://")))]
    #[x_kube(validation = bounds::credential_free_urls("usage.scrape.urls[]"))]
    pub urls: Vec<String>,
    /// Scrape every ready endpoint of this Service (in the policy's namespace), followed through its
    /// EndpointSlices as the gateway scales: at most 64 endpoints are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ScrapeService>,
    /// Name of the request counter, e.g. `gateway_requests_total`.
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"))]
    pub metric: String,
}

/// A Service whose endpoints are the gateway's metrics endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ScrapeService {
    /// Name of the Service, in the policy's namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,
    /// The endpoints' port: its name (as in the Service) or its number.
    #[schemars(length(min = 1, max = 15), regex(pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?|[0-9]{1,5})$"))]
    pub port: String,
    /// Path of the metrics endpoint; default `/metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), regex(pattern = r"^/[A-Za-z0-9._~!$&'()*+,;=:@/%-]*$"))]
    pub path: Option<String>,
    /// `http` (the default) or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?$"))]
    pub scheme: Option<String>,
}

/// Scaling of the gateway with the total usage of the policy's keys, in the manner of a HorizontalPodAutoscaler.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas")
    .message("scaling.minReplicas must be less than or equal to scaling.maxReplicas"))]
pub struct Scaling {
    /// The object to scale: anything with a scale subresource (Deployment, StatefulSet, …).
    pub target_ref: ScaleTargetRef,
    /// Fewest replicas; default 1, at least 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_replicas: Option<i32>,
    /// Most replicas; at least 0 and at least minReplicas.
    #[schemars(range(min = 0))]
    pub max_replicas: i32,
    /// The traffic one gateway replica serves, e.g. 500 requests per `1s`.
    pub capacity_per_replica: RequestRate,
    /// Percent of each replica's capacity to aim for: 1 to 100, default 80.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub target_utilization: Option<i32>,
    /// How fast to scale up: the lowest recommendation over the window is used (default window `0s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// How fast to scale down: the highest recommendation over the window is used (default window `300s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

/// A reference to an object with a scale subresource. Each field becomes part of an API path, so each has the
/// Kubernetes name pattern.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// API version of the target, e.g. `apps/v1`: `group/version` or `version` (lower-case DNS names).
    #[schemars(length(min = 1, max = 317), regex(pattern = API_VERSION_PATTERN))]
    pub api_version: String,
    /// Kind of the target, e.g. `Deployment`: a PascalCase identifier.
    #[schemars(length(min = 1, max = 63), regex(pattern = KIND_PATTERN))]
    pub kind: String,
    /// Name of the target in the policy's namespace: a DNS-1123 subdomain, at most 253 characters.
    #[schemars(length(min = 1, max = 253), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
}

/// Stabilization for one scaling direction.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// How far back recommendations are considered, e.g. `300s`; at most 1h (the HorizontalPodAutoscaler's own
    /// maximum; it also bounds how many recommendations a policy remembers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = bounds::duration_at_most("stabilizationWindow", bounds::MAX_STABILIZATION_WINDOW, "the HorizontalPodAutoscaler's maximum"))]
    pub stabilization_window: Option<GoDuration>,
}

/// What Keyward observed and did for a RateLimitPolicy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, UsageAvailable, ScalingActive, ScalingConflict and OverrideActive; with `enforce`, Enforced and
    /// EnforcementConflict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Total requests per second of all keys that reference this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_usage: Option<f64>,
    /// Total usage divided by the gateway's capacity at its current replicas (1.0 is full).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// The limit in force now, as `<requests>/<period>` (an active override or `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_limit: Option<String>,
    /// Replicas the scale target has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    /// Replicas Keyward recommends for the scale target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// When Keyward last changed the target's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// How many keys are NearLimit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_near_limit: Option<i32>,
    /// How many keys are Exhausted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_exhausted: Option<i32>,
    /// The limit the gateway enforces per key, in its units, e.g. `600/Minute` (set while `enforce` renders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforced_limit: Option<String>,
}
