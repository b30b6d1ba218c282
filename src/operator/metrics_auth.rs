//! Protection of `/metrics` (`keyward run --metrics-auth`), as controller-runtime's secure metrics and
//! kube-rbac-proxy do it: the caller sends a bearer token; the API server says who it is (TokenReview) and whether
//! that identity may `get` the non-resource URL `/metrics` (SubjectAccessReview). No token or an invalid one is 401,
//! a valid one without the permission 403. Users get it by binding the chart's `keyward-metrics-reader`
//! ClusterRole.
//!
//! Verdicts are cached for [`VERDICT_TTL`] by SHA-256 of the token (never the token itself), so a scrape every few
//! seconds costs two reviews a minute; failures to reach the API server are not cached. The token never appears in
//! logs or errors.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{NonResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use sha2::{Digest as _, Sha256};

/// How long a verdict on a token is reused.
pub const VERDICT_TTL: Duration = Duration::from_secs(60);
/// Most tokens remembered at once; past it the cache starts afresh (bounded memory whatever callers send).
pub const MAX_CACHED_TOKENS: usize = 1024;
/// The non-resource URL and verb a caller must be allowed.
pub const PATH: &str = "/metrics";

/// What the reviews said about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Authenticated and allowed: 200.
    Allowed,
    /// No bearer token, or one the API server does not accept: 401.
    Unauthenticated,
    /// Authenticated but not allowed to get /metrics: 403.
    Forbidden,
    /// The reviews could not be made (API server unreachable): 503, not cached.
    Unavailable,
}

/// The reviewer and its cache.
pub struct MetricsAuth {
    client: kube::Client,
    cache: Mutex<HashMap<[u8; 32], (Instant, Verdict)>>,
}

impl MetricsAuth {
    /// A reviewer that asks the API server through `client` (which needs `create` on tokenreviews and
    /// subjectaccessreviews).
    pub fn new(client: kube::Client) -> Self {
        MetricsAuth { client, cache: Mutex::default() }
    }

    /// The verdict for a request with this `Authorization` header value.
    pub async fn check(&self, authorization: Option<&str>) -> Verdict {
        let Some(token) = bearer(authorization) else { return Verdict::Unauthenticated };
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = Instant::now();
        if let Some(v) = self.cached(&key, now) {
            return v;
        }
        let verdict = self.review(token).await;
        if verdict != Verdict::Unavailable {
            let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache.retain(|_, (at, _)| now.saturating_duration_since(*at) < VERDICT_TTL);
            if cache.len() >= MAX_CACHED_TOKENS {
                cache.clear();
            }
            cache.insert(key, (now, verdict));
        }
        verdict
    }

    fn cached(&self, key: &[u8; 32], now: Instant) -> Option<Verdict> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.get(key).filter(|(at, _)| now.saturating_duration_since(*at) < VERDICT_TTL).map(|(_, v)| *v)
    }

    async fn review(&self, token: &str) -> Verdict {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), ..TokenReviewSpec::default() },
            ..TokenReview::default()
        };
        let reviewed = match Api::<TokenReview>::all(self.client.clone()).create(&PostParams::default(), &review).await
        {
            Ok(r) => r,
            Err(e) => {
                // NB: the error is kube's own (status and reason); the request body with the token is not in it.
                tracing::warn!(error = %e, "metrics auth: TokenReview failed");
                return Verdict::Unavailable;
            }
        };
        let status = reviewed.status.unwrap_or_default();
        let (true, Some(user)) = (status.authenticated.unwrap_or(false), status.user) else {
            return Verdict::Unauthenticated;
        };
        let access = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username,
                uid: user.uid,
                groups: user.groups,
                extra: user.extra,
                non_resource_attributes: Some(NonResourceAttributes {
                    path: Some(PATH.to_string()),
                    verb: Some("get".to_string()),
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        match Api::<SubjectAccessReview>::all(self.client.clone()).create(&PostParams::default(), &access).await {
            Ok(r) if r.status.as_ref().is_some_and(|s| s.allowed) => Verdict::Allowed,
            Ok(_) => Verdict::Forbidden,
            Err(e) => {
                tracing::warn!(error = %e, "metrics auth: SubjectAccessReview failed");
                Verdict::Unavailable
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if any.
fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bearer_tokens_are_taken() {
        assert_eq!(bearer(Some("Bearer abc.def")), Some("abc.def"));
        assert_eq!(bearer(Some("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(Some("Basic dXNlcjpwYXNz")), None);
        assert_eq!(bearer(Some("Bearer ")), None);
        assert_eq!(bearer(Some("Bearer")), None);
        assert_eq!(bearer(None), None);
    }
}
