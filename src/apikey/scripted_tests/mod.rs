//! Scripted API server answers (tower-test, as kube-rs' controller-rs does) for the paths a real server rarely
//! takes: the 409 after an optimistic create, a Secret that changed between two reads, a rotation request that the
//! cache has not caught up with. Each test asserts the exact requests a reconcile makes, and that it makes no more.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::api::apikey::ROTATE_ANNOTATION;
use crate::keys::{OsRandom, generate, key_id};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// One expected request and the answer to it.
struct Step {
    method: Method,
    path: &'static str,
    status: StatusCode,
    body: Value,
}

fn step(method: Method, path: &'static str, status: u16, body: Value) -> Step {
    Step { method, path, status: StatusCode::from_u16(status).expect("status"), body }
}

/// A context whose client talks to the script, and the task that plays it: it fails on any request out of order,
/// and on any request after the script's end (checked once the context is dropped).
fn scripted(steps: Vec<Step>) -> (Arc<Context>, tokio::task::JoinHandle<Vec<String>>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let ctx = Arc::new(Context::new(client, crate::metrics::Metrics::new()).with_sealer(sealer()));
    (ctx, tokio::spawn(play(handle, steps)))
}

/// The seal keys of the scripted operator.
fn sealer() -> seal::Sealer {
    seal::Sealer::new(vec![7; seal::KEY_BYTES], None).expect("key")
}

async fn play(mut handle: Handle, steps: Vec<Step>) -> Vec<String> {
    let mut seen = Vec::new();
    for s in steps {
        let (request, send) = handle.next_request().await.expect("the reconcile stopped before the script's end");
        let line = format!("{} {}", request.method(), request.uri().path());
        assert_eq!((request.method(), request.uri().path()), (&s.method, s.path), "after {seen:?}");
        seen.push(line);
        let body = serde_json::to_vec(&s.body).expect("json");
        send.send_response(Response::builder().status(s.status).body(Body::from(body)).expect("response"));
    }
    if let Some((request, _)) = handle.next_request().await {
        panic!("unexpected request {} {} after {seen:?}", request.method(), request.uri().path());
    }
    seen
}

fn apikey(annotations: Value, status: Value) -> Arc<ApiKey> {
    Arc::new(
        serde_json::from_value(json!({
            "apiVersion": "keyward.dev/v1alpha1", "kind": "ApiKey",
            "metadata": {"name": "k", "namespace": "ns", "uid": "u1", "generation": 1, "annotations": annotations},
            "spec": {}, "status": status,
        }))
        .expect("ApiKey"),
    )
}

fn owner(uid: &str) -> Value {
    json!([{"apiVersion": "keyward.dev/v1alpha1", "kind": "ApiKey", "name": "k", "uid": uid, "controller": true}])
}

fn secret_meta(rv: &str, uid: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": "k", "namespace": "ns", "resourceVersion": rv, "ownerReferences": owner(uid),
                     "annotations": annotations},
    })
}

fn conflict() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409,
           "message": "secrets \"k\" already exists"})
}

const SECRETS: &str = "/api/v1/namespaces/ns/secrets";
const SECRET: &str = "/api/v1/namespaces/ns/secrets/k";
const APIKEY: &str = "/apis/keyward.dev/v1alpha1/namespaces/ns/apikeys/k";
const STATUS: &str = "/apis/keyward.dev/v1alpha1/namespaces/ns/apikeys/k/status";

#[tokio::test]
async fn a_409_after_the_optimistic_create_reads_the_secret_and_decides_again() {
    let obj = apikey(json!({}), Value::Null);
    let foreign = secret_meta("9", "someone-else", json!({}));
    let status = json!({"apiVersion": "keyward.dev/v1alpha1", "kind": "ApiKey", "metadata": {"name": "k"}, "spec": {}});
    let (ctx, script) = scripted(vec![
        step(Method::POST, SECRETS, 409, conflict()),
        step(Method::GET, SECRET, 200, foreign),
        step(Method::PATCH, STATUS, 200, status),
    ]);
    let result = reconcile(obj, ctx.clone()).await;
    assert!(result.is_ok(), "{result:?}");
    drop(ctx);
    assert_eq!(script.await.expect("script").len(), 3);
}

#[tokio::test]
async fn a_secret_that_changed_between_two_reads_is_decided_again_without_a_write() {
    let obj = apikey(json!({}), json!({"keyId": "aaaaaaaaaaaa"}));
    let book = json!({(book::KEY_ID): "aaaaaaaaaaaa", (book::ROTATED_AT): "2026-01-01T00:00:00Z"});
    let newer = json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "k", "namespace": "ns", "resourceVersion": "6", "ownerReferences": owner("u1")}});
    let (ctx, script) = scripted(vec![
        step(Method::GET, SECRET, 200, secret_meta("5", "u1", book)),
        step(Method::GET, SECRET, 200, newer),
    ]);
    let result = reconcile(obj, ctx.clone()).await;
    assert!(matches!(result, Err(Error::Stale { .. })), "{result:?}");
    assert!(result.as_ref().err().is_some_and(ReconcileError::is_transient), "a race shows nothing on the object");
    drop(ctx);
    assert_eq!(script.await.expect("script").len(), 2);
}

#[tokio::test]
async fn a_rotation_request_the_cache_has_not_caught_up_with_is_not_answered() {
    let key = generate(&Default::default(), &mut OsRandom).expect("key");
    let id = key_id(&key);
    // Another instance already answered a newer request r2 (the Secret records it); this instance's cache still
    // holds the ApiKey with the older request r1, which therefore looks unanswered.
    let obj = apikey(json!({(ROTATE_ANNOTATION): "r1"}), json!({"keyId": id, "lastRotateRequest": "r0"}));
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key.as_bytes());
    let bk = Book {
        key_id: Some(id.clone()),
        rotated_at: Some("2026-01-01T00:00:00Z".parse().expect("ts")),
        rotate_request: Some("r2".into()),
        ..Book::default()
    };
    let seal = sealer().seal(&seal::Sealed { uid: "u1", secret: "k", book: &bk, current: Some(&key), previous: None });
    let mut annotations = serde_json::to_value(bk.to_annotations()).expect("annotations");
    annotations[seal::SEAL] = json!(seal);
    let full = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "k", "namespace": "ns", "resourceVersion": "5", "ownerReferences": owner("u1"),
                     "annotations": annotations},
        "data": {(book::DATA_KEY): b64}});
    let fresh = json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                       "metadata": {"name": "k", "namespace": "ns", "uid": "u1", "annotations": {(ROTATE_ANNOTATION): "r2"}}});
    let (ctx, script) = scripted(vec![step(Method::GET, SECRET, 200, full), step(Method::GET, APIKEY, 200, fresh)]);
    let result = reconcile(obj, ctx.clone()).await;
    let requeue = result.expect("no error");
    assert_eq!(requeue, Requeue::requeue(Duration::from_millis(500)), "decides again once the cache catches up");
    drop(ctx);
    assert_eq!(script.await.expect("script").len(), 2, "no Secret write, no status write");
}
