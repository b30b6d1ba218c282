//! `keyward_api_requests_total{verb}`: every request the operator's client sends to the API server, reads and
//! watches included, counted by a layer on the client (see [`layer`]). The benchmark divides it by the keys it
//! creates or rotates; an operator is judged by its requests per key as much as by its writes.
//!
//! NB: process-wide, because the client is built before the operator's [`super::Metrics`]; every `Metrics`
//! registers the same family.

use std::sync::LazyLock;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

type Labels = [(&'static str, &'static str); 1];

static REQUESTS: LazyLock<Family<Labels, Counter>> = LazyLock::new(|| {
    let f = Family::<Labels, Counter>::default();
    for verb in VERBS {
        drop(f.get_or_create(&[("verb", verb)]));
    }
    f
});

const VERBS: [&str; 7] = ["get", "list", "watch", "create", "update", "patch", "delete"];

/// The family, shared by every registry that exports it.
pub(super) fn family() -> Family<Labels, Counter> {
    REQUESTS.clone()
}

/// The Kubernetes verb of a request: a GET is a `watch` with `watch=true`, a `list` on a collection path (one
/// segment after the resource type; a namespaced path is `/namespaces/<ns>/<resource>`), else a `get`.
pub fn verb(method: &http::Method, uri: &http::Uri) -> &'static str {
    match *method {
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ if uri.query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1")) => "watch",
        _ if is_collection(uri.path()) => "list",
        _ => "get",
    }
}

/// `/api/v1/<r>`, `/api/v1/namespaces/<ns>/<r>`, `/apis/<g>/<v>/<r>`, `/apis/<g>/<v>/namespaces/<ns>/<r>`.
fn is_collection(path: &str) -> bool {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.first() {
        Some(&"api") => &parts[parts.len().min(2)..],
        Some(&"apis") => &parts[parts.len().min(3)..],
        _ => return false,
    };
    matches!(rest, [_] | ["namespaces", _, _])
}

/// A client layer that counts each request by verb.
pub fn layer<B>() -> tower::util::MapRequestLayer<fn(http::Request<B>) -> http::Request<B>> {
    tower::util::MapRequestLayer::new(count::<B>)
}

fn count<B>(req: http::Request<B>) -> http::Request<B> {
    REQUESTS.get_or_create(&[("verb", verb(req.method(), req.uri()))]).inc();
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(method: http::Method, uri: &str) -> &'static str {
        verb(&method, &uri.parse().expect("uri"))
    }

    #[test]
    fn verbs_follow_the_kubernetes_request_kinds() {
        use http::Method as M;
        assert_eq!(v(M::GET, "/api/v1/namespaces/ns/secrets/k"), "get");
        assert_eq!(v(M::GET, "/api/v1/namespaces/ns/secrets?labelSelector=a"), "list");
        assert_eq!(v(M::GET, "/api/v1/secrets"), "list");
        assert_eq!(
            v(M::GET, "/apis/keyward.dev/v1alpha1/namespaces/ns/apikeys?watch=true&timeoutSeconds=290"),
            "watch"
        );
        assert_eq!(v(M::GET, "/apis/keyward.dev/v1alpha1/namespaces/ns/apikeys/k"), "get");
        assert_eq!(v(M::GET, "/apis/keyward.dev/v1alpha1/apikeys"), "list");
        assert_eq!(v(M::GET, "/version"), "get");
        assert_eq!(v(M::PUT, "/api/v1/namespaces/ns/secrets/k"), "update");
        assert_eq!(v(M::PATCH, "/apis/keyward.dev/v1alpha1/namespaces/ns/apikeys/k/status"), "patch");
        assert_eq!(v(M::POST, "/apis/events.k8s.io/v1/namespaces/ns/events"), "create");
    }
}
