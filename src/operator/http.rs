//! The operator's HTTP endpoint: liveness (`/healthz`), readiness (`/readyz`) and Prometheus metrics (`/metrics`).
//!
//! Owns [`Health`], the small piece of state the probes read: whether the controllers' caches have synced and the
//! replica's leader-election role. Readiness follows the role: a standby is ready as soon as it runs (it has nothing
//! to sync, and a not-ready standby would be pulled from its Service for no reason), a leader — or a replica without
//! leader election — only once its caches are synced.
//!
//! `/metrics` may require a bearer token allowed to `get` it (`--metrics-auth`, see [`super::metrics_auth`]);
//! `/healthz` and `/readyz` stay open for the kubelet. The encoded metrics are reused for [`BODY_TTL`], so a storm
//! of scrapes costs one encoding per second.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use super::metrics_auth::{MetricsAuth, Verdict};
use crate::metrics::Metrics;

/// The content type of the OpenMetrics text format, as Prometheus negotiates it.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A replica's part in leader election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No leader election: this replica always reconciles.
    Disabled,
    /// This replica holds the Lease and reconciles.
    Leader,
    /// This replica waits for the Lease and does not reconcile.
    Standby,
}

impl Role {
    fn to_u8(self) -> u8 {
        match self {
            Role::Disabled => 0,
            Role::Leader => 1,
            Role::Standby => 2,
        }
    }

    fn from_u8(v: u8) -> Role {
        match v {
            1 => Role::Leader,
            2 => Role::Standby,
            _ => Role::Disabled,
        }
    }
}

/// Health shared by the operator and the probes; lock-free, share it as `Arc<Health>`.
#[derive(Debug)]
pub struct Health {
    synced: AtomicBool,
    role: AtomicU8,
}

impl Health {
    /// Not synced, role [`Role::Disabled`].
    pub fn new() -> Arc<Health> {
        Arc::new(Health { synced: AtomicBool::new(false), role: AtomicU8::new(Role::Disabled.to_u8()) })
    }

    /// The controllers' caches have synced (set once both controllers' first lists are in).
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::Release);
    }

    /// Whether the controllers' caches have synced.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Leader election role: Disabled (no election), Leader, Standby.
    pub fn set_role(&self, role: Role) {
        self.role.store(role.to_u8(), Ordering::Release);
    }

    /// The current leader election role.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    /// `Ok` when `/readyz` answers 200, else the one-line reason it answers 503 with.
    pub fn readiness(&self) -> Result<(), &'static str> {
        match (self.role(), self.synced()) {
            (Role::Standby, _) | (Role::Leader | Role::Disabled, true) => Ok(()),
            (Role::Leader, false) => Err("leader: caches not synced yet"),
            (Role::Disabled, false) => Err("caches not synced yet"),
        }
    }
}

/// Binds the endpoint's address (`host:port`; port 0 picks a free one, read it from `local_addr`).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// How long one encoding of the metrics is served again.
pub const BODY_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves GET `/healthz` (200 `ok` while every controller makes progress, else 503 with the reason), GET `/readyz` (200 `ok`, or 503 with a one-line reason;
/// see [`Health::readiness`]) and GET `/metrics` (the OpenMetrics text of `metrics`) on `listener` until `shutdown`
/// completes; other paths answer 404.
/// With `auth`, `/metrics` answers 401/403 unless the caller's bearer token is allowed to get it.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    auth: Option<Arc<MetricsAuth>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health, auth)).with_graceful_shutdown(shutdown).await
}

/// The endpoint's routes, for embedding elsewhere.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>, auth: Option<Arc<MetricsAuth>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AppState { metrics, health, auth, body: Arc::default() })
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    auth: Option<Arc<MetricsAuth>>,
    /// The last encoding and when it was made; the async lock makes concurrent scrapes wait for one encoding.
    body: Arc<tokio::sync::Mutex<Encoded>>,
}

/// One encoding of the metrics and when it was made.
type Encoded = Option<(std::time::Instant, axum::body::Bytes)>;

/// Liveness: 200 `ok` while every running controller makes progress, else 503 with the reason (see
/// [`crate::liveness`]).
async fn healthz() -> (StatusCode, String) {
    match crate::liveness::global().check(std::time::Instant::now()) {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.health.readiness() {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn metrics_text(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(auth) = &state.auth {
        let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        match auth.check(authorization).await {
            Verdict::Allowed => {}
            Verdict::Unauthenticated => {
                return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "Unauthorized")
                    .into_response();
            }
            Verdict::Forbidden => return (StatusCode::FORBIDDEN, "Forbidden").into_response(),
            Verdict::Unavailable => {
                return (StatusCode::SERVICE_UNAVAILABLE, "cannot review the token").into_response();
            }
        }
    }
    let mut body = state.body.lock().await;
    let fresh = body.as_ref().filter(|(at, _)| at.elapsed() < BODY_TTL).map(|(_, text)| text.clone());
    let text = match fresh {
        Some(text) => text,
        None => {
            // Encoding 10,000 keys takes milliseconds of CPU: off the async workers, so probes never wait behind
            // a scrape.
            let metrics = state.metrics.clone();
            match tokio::task::spawn_blocking(move || metrics.encode()).await {
                Ok(text) => {
                    let text = axum::body::Bytes::from(text);
                    *body = Some((std::time::Instant::now(), text.clone()));
                    text
                }
                Err(error) => {
                    tracing::error!(%error, "encoding the metrics failed");
                    return (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed").into_response();
                }
            }
        }
    };
    drop(body);
    ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A served endpoint on a free local port, stopped when dropped.
    struct Server {
        base: String,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        async fn start() -> Server {
            let listener = bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let (metrics, health) = (Metrics::new(), Health::new());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(serve(listener, metrics.clone(), health.clone(), None, async move {
                let _ = stopped.await;
            }));
            Server { base, metrics, health, stop: Some(stop), task }
        }

        async fn get(&self, path: &str) -> (u16, Option<String>, String) {
            let response = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
            let status = response.status().as_u16();
            let content_type =
                response.headers().get(reqwest::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string());
            (status, content_type, response.text().await.unwrap())
        }

        async fn stop(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await.unwrap().unwrap().unwrap();
        }
    }

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn healthz_is_ok_and_unknown_paths_are_404() {
        let server = Server::start().await;
        let (status, _, body) = server.get("/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        assert_eq!(server.get("/nope").await.0, 404);
        assert_eq!(server.get("/").await.0, 404);
        server.stop().await;
    }

    #[tokio::test]
    async fn readyz_follows_sync_and_role() {
        let server = Server::start().await;
        let health = server.health.clone();

        // Disabled (no election): ready only once synced.
        let (status, _, body) = server.get("/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(body, "caches not synced yet");
        assert!(!body.contains('\n'));
        health.set_synced(true);
        assert_eq!(server.get("/readyz").await.0, 200);

        // A healthy standby is ready even though it has synced nothing.
        health.set_synced(false);
        health.set_role(Role::Standby);
        assert_eq!(health.role(), Role::Standby);
        let (status, _, body) = server.get("/readyz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));

        // A leader is ready only once synced.
        health.set_role(Role::Leader);
        let (status, _, body) = server.get("/readyz").await;
        assert_eq!(status, 503);
        assert_eq!(body, "leader: caches not synced yet");
        health.set_synced(true);
        assert_eq!(server.get("/readyz").await.0, 200);
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_serve_openmetrics_text() {
        let server = Server::start().await;
        let m = &server.metrics;
        m.reconcile("apikey", std::time::Duration::from_millis(12), None);
        let next_rotation = Some(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1));
        let key = crate::metrics::KeyFigures { state: "Ready", ready: true, next_rotation, ..Default::default() };
        m.set_key("ns", "k", key);
        let policy = crate::metrics::PolicyFigures {
            utilization: Some(0.5),
            usage_rps: Some(10.0),
            desired: Some(3),
            current: Some(2),
            ..Default::default()
        };
        m.set_policy("ns", "gw", policy);
        m.set_leader(true);

        let (status, content_type, body) = server.get("/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        assert_eq!(sample(&body, r#"keyward_reconciles_total{controller="apikey",result="success"}"#), Some(1.0));
        let next = sample(&body, r#"keyward_apikey_next_rotation_seconds{namespace="ns",name="k"}"#).unwrap();
        assert!(next > 3500.0 && next <= 3600.0, "{next}");
        assert_eq!(sample(&body, r#"keyward_apikeys{state="Ready"}"#), Some(1.0));
        assert_eq!(
            sample(&body, r#"keyward_ratelimitpolicy_replicas{namespace="ns",name="gw",kind="desired"}"#),
            Some(3.0)
        );
        assert_eq!(
            sample(&body, r#"keyward_ratelimitpolicy_replicas{namespace="ns",name="gw",kind="current"}"#),
            Some(2.0)
        );
        assert_eq!(sample(&body, "keyward_leader"), Some(1.0));
        assert!(body.ends_with("# EOF\n"), "{body}");

        m.forget_key("ns", "k");
        // The same encoding is served for BODY_TTL.
        let (_, _, cached) = server.get("/metrics").await;
        assert!(cached.contains(r#"keyward_apikey_next_rotation_seconds{"#), "{cached}");
        tokio::time::sleep(BODY_TTL + std::time::Duration::from_millis(100)).await;
        let (_, _, body) = server.get("/metrics").await;
        assert!(!body.contains(r#"keyward_apikey_next_rotation_seconds{"#), "{body}");
        assert_eq!(sample(&body, r#"keyward_apikeys{state="Ready"}"#), Some(0.0));
        server.stop().await;
    }
}
