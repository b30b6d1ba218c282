//! The ApiKey controller: read what exists (the ApiKey, its Secret's metadata) → decide (pure, `plan`) → apply
//! (the only writes: the Secret, rollout restarts, status) → requeue at the next due moment.
//!
//! Secrets are watched metadata-only and filtered by Keyward's label; Secret data is read only when a write needs
//! it (rotation, grace end) or once per Secret version to check that nobody edited the key material.

pub mod book;
mod events;
pub mod plan;
mod read;
pub mod restart;
pub mod secret;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::events::{Event, EventType, Publisher};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use self::book::Book;
use self::events::{event_for, publish};
use self::plan::{Action, Decision, Inputs, IssueKind, SecretState};
use self::read::{current_key, data_due, read_at_version, state_request};
use crate::api::ApiKey;
use crate::api::apikey::ROTATE_ANNOTATION;
use crate::api::ratelimit::RateLimitPolicy;
use crate::keys::{self, KeyMaterial, OsRandom};
use crate::metrics::Metrics;
use crate::schedule::RotationPlan;

/// Field manager of this controller's server-side applies.
pub const MANAGER: &str = "keyward/apikey";

/// Errors of one reconcile. Messages name objects and operations, never key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} Secret {ns}/{name}: {source}")]
    Secret { op: &'static str, ns: String, name: String, source: kube::Error },
    #[error("{op} ApiKey {ns}/{name}: {source}")]
    ApiKey { op: &'static str, ns: String, name: String, source: kube::Error },
    #[error("write status of ApiKey {ns}/{name}: {source}")]
    Status { ns: String, name: String, source: kube::Error },
    #[error("restart {kind:?} {ns}/{name}: {source}")]
    Restart { kind: crate::api::apikey::RolloutKind, ns: String, name: String, source: kube::Error },
    #[error("key material: {0}")]
    Key(#[from] keys::KeyError),
    #[error("ApiKey has no namespace or uid")]
    MissingMetadata,
    #[error("Secret {ns}/{name} changed while being reconciled; deciding again")]
    Stale { ns: String, name: String },
}

impl Error {
    /// PascalCase category, for events, conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Secret { source, .. } if is_conflict(source) => "SecretWriteConflict",
            Error::Secret { .. } => "SecretWriteFailed",
            Error::ApiKey { .. } => "ApiKeyReadFailed",
            Error::Status { .. } => "StatusWriteFailed",
            Error::Restart { .. } => "RolloutRestartFailed",
            Error::Key(e) => e.reason(),
            Error::MissingMetadata => "InvalidObject",
            Error::Stale { .. } => "SecretWriteConflict",
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Shared by all reconciles.
pub struct Context {
    pub client: kube::Client,
    events: Publisher,
    /// The clock; injected so tests and benchmarks can move time.
    pub now: Arc<dyn Fn() -> Timestamp + Send + Sync>,
    /// Secret resourceVersions whose key material was checked against their `key-id`.
    verified: Mutex<HashMap<(String, String), String>>,
    /// Consecutive failures per ApiKey, for exponential backoff.
    failures: crate::backoff::Backoff<ApiKey>,
    /// The RateLimitPolicies, to clear the usage of a key whose policy is gone; set by [`run`].
    policies: std::sync::OnceLock<(Store<RateLimitPolicy>, crate::cache::Ready)>,
    pub metrics: Arc<Metrics>,
    /// Keys whose state is in the metrics, to drop deleted ones.
    reported: Mutex<std::collections::HashSet<ObjectRef<ApiKey>>>,
    /// The operator's floors (`keyward run --min-rotation-interval`, `--min-grace-period`).
    pub minimums: crate::minimums::Minimums,
}

/// Name of this controller in metrics.
pub const CONTROLLER: &str = "apikey";

impl Context {
    /// A context with the system clock.
    pub fn new(client: kube::Client, metrics: Arc<Metrics>) -> Self {
        Context {
            client: client.clone(),
            events: Publisher::keyward(client),
            now: Arc::new(Timestamp::now),
            verified: Mutex::default(),
            failures: Default::default(),
            policies: std::sync::OnceLock::new(),
            metrics,
            reported: Mutex::default(),
            minimums: crate::minimums::Minimums::default(),
        }
    }

    fn verified(&self, ns: &str, name: &str, rv: &str) -> bool {
        self.verified
            .lock()
            .map(|m| m.get(&(ns.to_string(), name.to_string())).is_some_and(|v| v == rv))
            .unwrap_or(false)
    }

    fn mark_verified(&self, ns: &str, name: &str, rv: Option<&str>) {
        if let (Ok(mut m), Some(rv)) = (self.verified.lock(), rv) {
            m.insert((ns.to_string(), name.to_string()), rv.to_string());
        }
    }
}

/// The ApiKey cache: shared with the RateLimitPolicy controller, filled by this controller polling its events.
pub struct Keys<S> {
    pub store: Store<ApiKey>,
    pub ready: crate::cache::Ready,
    pub events: S,
}

/// Runs the controller until `shutdown` completes. `namespace` limits it to one namespace; `keys` is the ApiKey
/// cache of the same scope (see [`crate::cache::reflected`]).
pub async fn run<S>(
    ctx: Arc<Context>,
    namespace: Option<String>,
    keys: Keys<S>,
    concurrency: u16,
    synced: tokio::sync::oneshot::Sender<()>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) where
    S: futures::Stream<Item = Result<watcher::Event<ApiKey>, watcher::Error>> + Send + 'static,
{
    let client = ctx.client.clone();
    let secrets: Api<PartialObjectMeta<Secret>> = crate::cache::scoped(&client, namespace.as_deref());
    // NB: metadata-only and label-filtered: Secret data never enters the watch cache.
    let secret_cfg = watcher::Config::default().labels(&format!("{}={}", book::MANAGED_BY_LABEL, book::MANAGED_BY));
    let own = ctx.clone();
    let secret_stream = watcher(secrets, secret_cfg).default_backoff().filter_map(move |event| {
        futures::future::ready(match event {
            // NB: a version this controller wrote (or already checked) was handled by the reconcile that made it;
            // reconciling again for it would only re-read, on a cached ApiKey whose status may not be in yet.
            Ok(watcher::Event::Apply(s) | watcher::Event::InitApply(s)) => {
                let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
                let rv = s.metadata.resource_version.as_deref().unwrap_or_default();
                (!own.verified(&ns, &name, rv)).then_some(Ok(s))
            }
            Ok(watcher::Event::Delete(s)) => Some(Ok(s)),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        })
    });
    let shutdown = crate::drain::Shutdown::new(shutdown);
    // Policies are cached; a deleted one triggers its keys, whose usage (written by the RateLimitPolicy
    // controller) is then cleared.
    let policies: Api<RateLimitPolicy> = crate::cache::scoped(&client, namespace.as_deref());
    let (policy_reader, policies_ready, policy_events) =
        crate::cache::reflected(policies, watcher::Config::default().any_semantic());
    let _ = ctx.policies.set((policy_reader, policies_ready.clone()));
    let deleted_policies = policy_events.filter_map(|ev| {
        futures::future::ready(match ev {
            Ok(watcher::Event::Delete(p)) => Some(Ok(p)),
            Err(e) => Some(Err(e)),
            Ok(_) => None,
        })
    });
    let Keys { store: keys, ready: keys_ready, events: key_events } = keys;
    // NB: only what this controller acts on triggers it: the spec (generation), annotations (rotation requests),
    // deletion. Status writes (its own, and the RateLimitPolicy controller's usage) do not.
    let triggers = key_events.applied_objects().predicate_filter(trigger_hash, Default::default());
    let controller = Controller::for_stream(triggers, keys.clone());
    // Ready once both caches are in; then, every 30 s, deleted keys leave the metrics.
    let housekeeping = tokio::spawn({
        let (keys, ctx) = (keys.clone(), ctx.clone());
        async move {
            if keys_ready.wait().await {
                policies_ready.wait().await;
            }
            tracing::debug!("ApiKey controller caches synced");
            let _ = synced.send(());
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let gone: Vec<ObjectRef<ApiKey>> = ctx
                    .reported
                    .lock()
                    .map(|r| r.iter().filter(|k| keys.get(k).is_none()).cloned().collect())
                    .unwrap_or_default();
                for k in gone {
                    ctx.metrics.forget_key(k.namespace.as_deref().unwrap_or_default(), &k.name);
                    if let Ok(mut r) = ctx.reported.lock() {
                        r.remove(&k);
                    }
                }
            }
        }
    });
    let controller = controller
        .owns_stream(secret_stream)
        .watches_stream(deleted_policies, move |policy: RateLimitPolicy| {
            let (ns, name) = (policy.namespace(), policy.name_any());
            keys.state()
                .into_iter()
                .filter(|k| {
                    k.namespace() == ns && k.spec.rate_limit_policy_ref.as_ref().is_some_and(|r| r.name == name)
                })
                .map(|k| ObjectRef::from_obj(k.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .trigger_backoff(crate::backoff::TriggersBackOffAlone)
        .graceful_shutdown_on(async move {
            let _ = shutdown.graceful.await;
        })
        .run(crate::drain::watched("ApiKey", reconcile), error_policy, ctx)
        .for_each(crate::drain::log_result);
    crate::drain::run_bounded(controller, shutdown.started, "ApiKey").await;
    housekeeping.abort();
}

/// What a change must alter to trigger a reconcile: generation, annotations, deletion.
fn trigger_hash(k: &ApiKey) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let m = &k.metadata;
    (m.generation, &m.annotations, m.deletion_timestamp.is_some()).hash(&mut h);
    Some(h.finish())
}

/// How long a shutdown waits for in-flight reconciles.
pub const DRAIN_TIMEOUT: Duration = crate::drain::DRAIN_TIMEOUT;

/// Exponential backoff per object: 1 s doubling to 5 minutes, reset by a success.
fn error_policy(obj: Arc<ApiKey>, err: &Error, ctx: Arc<Context>) -> Requeue {
    let delay = ctx.failures.failed(obj.as_ref());
    tracing::warn!(namespace = obj.namespace().as_deref(), name = %obj.name_any(), reason = err.reason(), error = %err, retry_in = ?delay, "reconcile failed");
    Requeue::requeue(delay)
}

#[tracing::instrument(skip_all, fields(namespace = obj.namespace().as_deref(), name = %obj.name_any()))]
async fn reconcile(obj: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let started = std::time::Instant::now();
    let optimistic = obj.status.is_none();
    let mut result = reconcile_inner(&obj, &ctx, optimistic).await;
    if optimistic && matches!(&result, Err(Error::Secret { op: "create", source, .. }) if is_conflict(source)) {
        // The Secret existed after all (a crash between its create and the first status write, or someone else's
        // Secret of that name): read it and decide again.
        tracing::debug!("the Secret exists already; reading it");
        result = reconcile_inner(&obj, &ctx, false).await;
    }
    ctx.metrics.reconcile(CONTROLLER, started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.failures.succeeded(obj.as_ref());
    }
    result
}

async fn reconcile_inner(apikey: &ApiKey, ctx: &Context, optimistic: bool) -> Result<Requeue, Error> {
    // NB: whole seconds, the precision of metav1.Time: the rotation time in the Secret and in status must agree.
    let now = (ctx.now)();
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let ns = apikey.namespace().ok_or(Error::MissingMetadata)?;
    let uid = apikey.uid().ok_or(Error::MissingMetadata)?;
    let name = apikey.name_any();
    if apikey.meta().deletion_timestamp.is_some() {
        // Garbage collection removes the Secret with its owner.
        return Ok(Requeue::await_change());
    }
    let secret_name = plan::secret_name(&apikey.spec, &name).to_string();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let serr = |op: &'static str| {
        let (ns, name) = (ns.clone(), secret_name.clone());
        move |source| Error::Secret { op, ns, name, source }
    };

    let rotate_request = apikey.annotations().get(ROTATE_ANNOTATION).map(String::as_str);
    let had_key = apikey.status.as_ref().is_some_and(|s| s.key_id.is_some() || s.rotation_count.unwrap_or(0) > 0);
    let jitter_key = format!("{ns}/{name}/{uid}");
    let rotation = RotationPlan::from_spec_with(apikey.spec.rotation.as_ref(), &ctx.minimums);
    // NB: a format the schema would refuse can still be stored (before a schema tightening): it is a bad spec like a
    // bad schedule (Ready=False InvalidSpec, the existing key kept), not a reconcile error retried forever.
    let format = apikey.spec.format.clone().unwrap_or_default();
    let spec_check = rotation.as_ref().map_err(ToString::to_string).and_then(|plan| {
        keys::ResolvedFormat::resolve(&format).map(|_| plan).map_err(|e| match e {
            keys::KeyError::InvalidSpec(m) => format!("format.{m}"),
            e => format!("format: {e}"),
        })
    });

    // A key seen for the first time (no status) almost never has a Secret yet: when the decision on a missing Secret
    // is to issue, the read is skipped and the create tells whether the Secret exists after all (409: `reconcile`
    // runs again, with the read). Saves a request per new key, at the API server's limit on a cold start.
    let decide = |secret: &SecretState, spec_check| {
        plan::decide(
            &Inputs { spec: &apikey.spec, rotate_request, secret, had_key, jitter_key: &jitter_key, now },
            spec_check,
        )
    };
    let assumed: Option<Decision> = optimistic
        .then(|| decide(&SecretState::Missing, spec_check.clone()))
        .filter(|d| matches!(d.action, Action::Issue(IssueKind::First)));
    // Dereference: what exists. Usually the Secret's metadata only; the whole Secret when the status says a write
    // that keeps key material is due (one read instead of two when a thousand keys are due in the same second), or
    // when the fingerprint check reads it. A whole Secret read is kept for the write.
    let (meta, mut fetched) = if assumed.is_some() {
        (None, None)
    } else if data_due(apikey, now) {
        let full = secrets.get_opt(&secret_name).await.map_err(serr("read"))?;
        (full.as_ref().map(|s| s.metadata.clone()), full)
    } else {
        let partial = secrets.get_metadata_opt(&secret_name).await.map_err(serr("read"))?;
        (partial.map(|m| m.metadata), None)
    };
    let state = match &meta {
        None => SecretState::Missing,
        Some(m) if !secret::controlled_by(m.owner_references.as_ref(), apikey) => SecretState::Foreign,
        Some(m) => {
            let book = Book::from_annotations(m.annotations.as_ref().unwrap_or(&Default::default()));
            let rv = m.resource_version.clone().unwrap_or_default();
            let tampered = if book.has_key() && !ctx.verified(&ns, &secret_name, &rv) {
                let full = match fetched.take() {
                    Some(full) => full,
                    None => read_at_version(&secrets, &ns, &secret_name, m.resource_version.as_deref()).await?,
                };
                let ok = current_key(&full).is_some_and(|k| Some(keys::key_id(&k)) == book.key_id);
                if ok {
                    ctx.mark_verified(&ns, &secret_name, Some(&rv));
                }
                fetched = Some(full);
                !ok
            } else {
                false
            };
            SecretState::Managed { book, tampered }
        }
    };
    // Decide.
    let decision: Decision = match assumed {
        Some(decision) => decision,
        None => decide(&state, spec_check),
    };
    if !matches!(decision.action, Action::Nothing) {
        tracing::debug!(
            action = ?decision.action,
            request = rotate_request,
            answered = ?state_request(&state),
            secret_version = meta.as_ref().and_then(|m| m.resource_version.as_deref()),
            apikey_version = apikey.resource_version().as_deref(),
            "decided"
        );
    }

    // NB: a requested rotation is decided on the CACHED ApiKey's request and the Secret as just read. When the cache
    // is behind (another instance has already answered a newer request, so the Secret records it), the old request
    // looks unanswered and the key would rotate again. Confirm the request on a fresh read of the ApiKey first: it
    // is read after the Secret, so it holds every request the Secret has answered. Requests are rare; one read each.
    if matches!(decision.action, Action::Rotate { manual: true }) {
        let api: Api<ApiKey> = Api::namespaced(ctx.client.clone(), &ns);
        let fresh = api.get_metadata(&name).await.map_err(|source| Error::ApiKey {
            op: "read",
            ns: ns.clone(),
            name: name.clone(),
            source,
        })?;
        let fresh_request = fresh.metadata.annotations.as_ref().and_then(|a| a.get(ROTATE_ANNOTATION));
        if fresh.metadata.uid.as_deref() != Some(uid.as_str()) || fresh_request.map(String::as_str) != rotate_request {
            tracing::debug!("the cached ApiKey is behind its rotation request; deciding again once it catches up");
            return Ok(Requeue::requeue(Duration::from_millis(500)));
        }
    }

    // Apply: the Secret first, so that everything after it is derived from what was persisted.
    let old_book = match &state {
        SecretState::Managed { book, .. } => Some(book.clone()),
        _ => None,
    };
    let book_after = match &decision.action {
        Action::Nothing => old_book.clone(),
        action => {
            let old = old_book.clone().unwrap_or_default();
            let grace = rotation.as_ref().map(RotationPlan::grace_period).unwrap_or_default();
            let (new_key, new_id) = match action {
                Action::Issue(_) | Action::Rotate { .. } => {
                    let k = keys::generate(&apikey.spec.format.clone().unwrap_or_default(), &mut OsRandom)?;
                    let id = keys::key_id(&k);
                    (Some(k), Some(id))
                }
                _ => (None, None),
            };
            let next = plan::next_book(&old, action, new_id, rotate_request, grace, now);
            // NB: every write is conditional on the resourceVersion the DECISION was based on, not on a later
            // read: if the Secret changed in between (another instance rotated), the write fails with 409 and the
            // next reconcile decides again. Conditioning on the later read would let a stale decision rotate a
            // second time and push the legitimate previous key out of its grace period.
            let rv = meta.as_ref().and_then(|m| m.resource_version.clone());
            // Data is read only for the writes that keep existing material.
            let (current, previous): (Option<KeyMaterial>, Option<KeyMaterial>) = match action {
                Action::Rotate { .. } | Action::DropPrevious => {
                    let full = match fetched.take() {
                        Some(full) => full,
                        None => read_at_version(&secrets, &ns, &secret_name, rv.as_deref()).await?,
                    };
                    let cur = current_key(&full);
                    match action {
                        Action::Rotate { .. } => (new_key, if next.has_previous() { cur } else { None }),
                        _ => (cur, None),
                    }
                }
                _ => (new_key, None),
            };
            let desired = secret::build(
                apikey,
                &secret_name,
                &next,
                &secret::Material { current: current.as_ref(), previous: previous.as_ref() },
                rv,
            );
            let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
            ctx.metrics.api_write(CONTROLLER, "Secret");
            crate::crashpoint::before_secret_write(action);
            let written = if matches!(state, SecretState::Missing) {
                secrets.create(&pp, &desired).await.map_err(serr("create"))?
            } else {
                // NB: replace carries the resourceVersion read above: if another writer (a second operator
                // instance, a user) changed the Secret since, this fails with 409 and the next reconcile re-reads.
                secrets.replace(&secret_name, &pp, &desired).await.map_err(serr("update"))?
            };
            crate::crashpoint::after_secret_write(action);
            ctx.mark_verified(&ns, &secret_name, written.metadata.resource_version.as_deref());
            match action {
                Action::Rotate { manual: true } => ctx.metrics.rotation("manual"),
                Action::Rotate { manual: false } => ctx.metrics.rotation("scheduled"),
                Action::Issue(IssueKind::Regenerated) => ctx.metrics.rotation("regenerated"),
                Action::Issue(IssueKind::Tampered) => ctx.metrics.rotation("tampered"),
                _ => {}
            }
            publish(ctx, apikey, event_for(action, &next, &secret_name)).await;
            Some(next)
        }
    };

    // Rollout restarts for the key now in the Secret.
    let just_rotated = matches!(decision.action, Action::Rotate { .. });
    let requeue_restart = match &book_after {
        Some(b) => restart_consumers(ctx, apikey, &ns, b, just_rotated, now).await?,
        None => None,
    };

    // Status, derived from the persisted bookkeeping; written only when it changes.
    let (next_rotation, requeue_at) = plan::next_due(
        book_after.as_ref().unwrap_or(&Book::default()),
        rotation.as_ref().ok(),
        &apikey.spec,
        &jitter_key,
        now,
    );
    // An issued key's condition names its fingerprint, known only after the write.
    let ready = if decision.ready.reason == plan::reason::KEY_ISSUED {
        plan::issued_condition(book_after.as_ref().and_then(|b| b.key_id.as_deref()))
    } else {
        decision.ready.clone()
    };
    let requeue_at = [requeue_at, decision.requeue_at, requeue_restart].into_iter().flatten().min();
    let status = status::desired(apikey, book_after.as_ref(), &ready, next_rotation, now);
    ctx.metrics.set_key(&ns, &name, if ready.status { "Ready" } else { ready.reason }, next_rotation);
    if let Ok(mut r) = ctx.reported.lock() {
        r.insert(ObjectRef::from_obj(apikey));
    }
    if status::owned(apikey.status.as_ref()) != status {
        ctx.metrics.api_write(CONTROLLER, "ApiKeyStatus");
        let api: Api<ApiKey> = Api::namespaced(ctx.client.clone(), &ns);
        let body = serde_json::json!({
            "apiVersion": "keyward.dev/v1alpha1",
            "kind": "ApiKey",
            "status": status,
        });
        api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&body))
            .await
            .map_err(|source| Error::Status { ns: ns.clone(), name: name.clone(), source })?;
    }

    clear_orphaned_usage(ctx, apikey, &ns, &name).await?;

    Ok(match requeue_at {
        Some(t) => {
            let d = t.duration_since(now);
            Requeue::requeue(Duration::try_from(d).unwrap_or_default().max(Duration::from_millis(50)))
        }
        None => Requeue::await_change(),
    })
}

/// Removes `status.usage`, `NearLimit` and `Exhausted` when the key references no RateLimitPolicy, or one that no
/// longer exists: an apply, as the RateLimitPolicy controller's field manager, that owns nothing.
async fn clear_orphaned_usage(ctx: &Context, apikey: &ApiKey, ns: &str, name: &str) -> Result<(), Error> {
    let Some(status) = apikey.status.as_ref() else { return Ok(()) };
    let foreign = |c: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
        c.type_ == crate::ratelimit::keys::NEAR_LIMIT || c.type_ == crate::ratelimit::keys::EXHAUSTED
    };
    if status.usage.is_none() && !status.conditions.iter().any(|c| foreign(&c)) {
        return Ok(());
    }
    if let Some(policy) = apikey.spec.rate_limit_policy_ref.as_ref() {
        // Until the policies are listed, a policy's absence means nothing: leave the usage for a later reconcile.
        let Some((store, ready)) = ctx.policies.get() else { return Ok(()) };
        if !ready.is_ready() || store.get(&ObjectRef::new(&policy.name).within(ns)).is_some() {
            return Ok(());
        }
    }
    let api: Api<ApiKey> = Api::namespaced(ctx.client.clone(), ns);
    ctx.metrics.api_write(CONTROLLER, "ApiKeyStatus");
    let body = serde_json::json!({ "apiVersion": "keyward.dev/v1alpha1", "kind": "ApiKey", "status": {} });
    api.patch_status(name, &PatchParams::apply(crate::ratelimit::MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(|source| Error::Status { ns: ns.to_string(), name: name.to_string(), source })?;
    Ok(())
}

/// Restarts the workloads listed in `rolloutRestart` that have not been restarted for the key in `book`; returns
/// when to look again if a restart waits for the debounce window. A missing target is reported only right after a
/// rotation, so an idle reconcile publishes nothing.
async fn restart_consumers(
    ctx: &Context,
    apikey: &ApiKey,
    ns: &str,
    book: &Book,
    just_rotated: bool,
    now: Timestamp,
) -> Result<Option<Timestamp>, Error> {
    let Some(at) = book.rotated_at.filter(|_| book.has_key()) else { return Ok(None) };
    let mut wait: Option<Timestamp> = None;
    for t in &apikey.spec.rollout_restart {
        let rerr = |source| Error::Restart { kind: t.kind, ns: ns.to_string(), name: t.name.clone(), source };
        let (type_, reason, note) = match restart::current(&ctx.client, ns, t).await.map_err(rerr)? {
            None if just_rotated => (
                EventType::Warning,
                "RolloutTargetMissing",
                format!("{:?} {} does not exist; nothing to restart", t.kind, t.name),
            ),
            None => continue,
            Some(cur) => match restart::plan(cur.as_deref(), at, book.rotation_count, now) {
                restart::RestartPlan::UpToDate => continue,
                restart::RestartPlan::WaitUntil(w) => {
                    wait = Some(wait.map_or(w, |x| x.min(w)));
                    continue;
                }
                restart::RestartPlan::Restart => {
                    ctx.metrics.api_write(CONTROLLER, "RolloutRestart");
                    crate::crashpoint::hit(crate::crashpoint::Point::BeforeRolloutRestart);
                    restart::restart(&ctx.client, ns, t, &at.to_string()).await.map_err(rerr)?;
                    crate::crashpoint::hit(crate::crashpoint::Point::AfterRolloutRestart);
                    (
                        EventType::Normal,
                        "RolloutRestarted",
                        format!("restarted {:?} {} for the key issued at {at}", t.kind, t.name),
                    )
                }
            },
        };
        let ev =
            Event { type_, reason: reason.into(), note: Some(note), action: "RolloutRestart".into(), secondary: None };
        publish(ctx, apikey, ev).await;
    }
    Ok(wait)
}

#[cfg(test)]
mod tests;
