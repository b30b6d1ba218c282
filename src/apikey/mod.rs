//! The ApiKey controller, a short pipeline: observe (`observe`: the ApiKey's facts and its Secret, into one
//! value) → decide and plan the write (`plan`, pure) → apply (`apply`: the Secret, rollout restarts, status; the
//! only writes) → requeue at the next due moment.
//!
//! Secrets are watched metadata-only and filtered by Keyward's label; Secret data is read only when a write needs
//! it (rotation, grace end) or once per Secret version to check that nobody edited the key material.

mod apply;
pub mod book;
mod events;
mod follow;
pub mod layout;
pub mod observe;
pub mod overlap;
pub mod plan;
mod priority;
pub mod restart;
pub mod seal;
pub mod secret;
pub mod status;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action as Requeue, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use self::book::Book;
use self::observe::Observed;
use self::plan::{Action, Decision};
use crate::api::ApiKey;
use crate::api::ratelimit::RateLimitPolicy;
use crate::keys::{self, OsRandom};
use crate::metrics::Metrics;
use crate::runtime::{Launch, Plumbing, ReconcileError, cache};

/// Field manager of this controller's server-side applies.
pub const MANAGER: &str = "keyward/apikey";

/// Name of this controller in metrics.
pub const CONTROLLER: &str = "apikey";

/// Errors of one reconcile. Messages name objects and operations, never key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} Secret {ns}/{name}: {}", crate::runtime::describe(source))]
    Secret { op: &'static str, ns: String, name: String, source: kube::Error },
    #[error("{op} ApiKey {ns}/{name}: {}", crate::runtime::describe(source))]
    ApiKey { op: &'static str, ns: String, name: String, source: kube::Error },
    #[error("write status of ApiKey {ns}/{name}: {}", crate::runtime::describe(source))]
    Status { ns: String, name: String, source: kube::Error },
    #[error("restart {kind:?} {ns}/{name}: {}", crate::runtime::describe(source))]
    Restart { kind: crate::api::apikey::RolloutKind, ns: String, name: String, source: kube::Error },
    #[error("key material: {0}")]
    Key(#[from] keys::KeyError),
    #[error("ApiKey has no namespace or uid")]
    MissingMetadata,
    #[error("Secret {ns}/{name} changed while being reconciled; deciding again")]
    Stale { ns: String, name: String },
    #[error("cannot remove the key material from Secret {ns}/{name}: {}", crate::runtime::describe(source))]
    RevocationBlocked { ns: String, name: String, source: kube::Error },
}

impl ReconcileError for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Secret { source, .. } if is_conflict(source) => "SecretWriteConflict",
            Error::Secret { .. } => "SecretWriteFailed",
            Error::ApiKey { .. } => "ApiKeyReadFailed",
            Error::Status { .. } => "StatusWriteFailed",
            Error::Restart { .. } => "RolloutRestartFailed",
            Error::Key(e) => e.reason(),
            Error::MissingMetadata => "InvalidObject",
            Error::Stale { .. } => "SecretWriteConflict",
            Error::RevocationBlocked { .. } => "RevocationBlocked",
        }
    }

    fn is_transient(&self) -> bool {
        match self {
            Error::Secret { source, .. } | Error::Status { source, .. } => is_conflict(source),
            Error::Stale { .. } => true,
            _ => false,
        }
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Shared by all reconciles.
pub struct Context {
    /// Client, clock, events, metrics and backoff.
    pub runtime: Plumbing<ApiKey>,
    /// Secret resourceVersions whose key material was checked against their `key-id`.
    verified: Mutex<HashMap<(String, String), String>>,
    /// The RateLimitPolicies, to tell a key whose policy is missing; set by [`run`].
    policies: OnceLock<(Store<RateLimitPolicy>, cache::Ready)>,
    /// Keys whose state is in the metrics, to drop deleted ones.
    reported: Mutex<HashSet<ObjectRef<ApiKey>>>,
    /// Revocation first (see [`priority`]); set by [`run`].
    lanes: OnceLock<priority::Lanes>,
    /// Statuses and events after the Secret writes (see [`follow`]); set by [`run`], else they are written inline.
    lane: OnceLock<follow::Lane>,
    /// The operator's seal keys (see [`seal`]).
    sealer: seal::Sealer,
    /// How often every key's Secret is looked at even when nothing happens (spread per key over the second half of
    /// this period), so an edit that escapes the watch (a removed label) is still found.
    recheck: Duration,
    /// The operator's floors (`keyward run --min-rotation-interval`, `--min-grace-period`).
    pub minimums: crate::minimums::Minimums,
}

/// Default of [`Context::with_recheck`].
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(600);

impl Context {
    /// A context with the system clock.
    pub fn new(client: kube::Client, metrics: Arc<Metrics>) -> Self {
        Context {
            runtime: Plumbing::new(client, metrics, CONTROLLER, MANAGER),
            verified: Mutex::default(),
            policies: OnceLock::new(),
            reported: Mutex::default(),
            lanes: OnceLock::new(),
            lane: OnceLock::new(),
            recheck: DEFAULT_RECHECK,
            sealer: seal::Sealer::ephemeral(),
            minimums: crate::minimums::Minimums::default(),
        }
    }

    /// Refuses rotation specs below the operator's floors.
    pub fn with_minimums(mut self, minimums: crate::minimums::Minimums) -> Self {
        self.minimums = minimums;
        self
    }

    /// Seals with the operator's keys instead of a key of this process alone.
    pub fn with_sealer(mut self, sealer: seal::Sealer) -> Self {
        self.sealer = sealer;
        self
    }

    /// Looks at every key's Secret at least every `recheck` (at least a second).
    pub fn with_recheck(mut self, recheck: Duration) -> Self {
        self.recheck = recheck.max(Duration::from_secs(1));
        self
    }

    /// When `o`'s key is next looked at even if nothing is due: within the second half of the recheck period, at a
    /// point fixed per key so that keys started together spread out.
    fn recheck_at(&self, o: &Observed, now: Timestamp) -> Option<Timestamp> {
        let fraction = 0.5 + spread_of(&o.uid) / 2.0;
        let wait = jiff::SignedDuration::try_from(self.recheck.mul_f64(fraction)).ok()?;
        now.checked_add(wait).ok()
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

    /// Whether this version of the Secret was written or checked by this controller.
    fn verified_meta(&self, s: &PartialObjectMeta<Secret>) -> bool {
        let (ns, name) = (s.namespace().unwrap_or_default(), s.name_any());
        self.verified(&ns, &name, s.metadata.resource_version.as_deref().unwrap_or_default())
    }

    /// Marks the ApiKey that controls `secret` as possibly tampered with (its next reconcile takes a revocation
    /// slot); returns the Secret.
    fn suspect_owner(&self, secret: PartialObjectMeta<Secret>) -> PartialObjectMeta<Secret> {
        let owner = secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true) && o.kind == "ApiKey");
        if let (Some(lanes), Some(o), Some(ns)) = (self.lanes.get(), owner, secret.metadata.namespace.as_deref()) {
            lanes.suspect(ObjectRef::new(&o.name).within(ns));
        }
        secret
    }

    /// Drops deleted keys from the metrics.
    fn forget_deleted(&self, keys: &Store<ApiKey>) {
        let gone: Vec<ObjectRef<ApiKey>> = self
            .reported
            .lock()
            .map(|r| r.iter().filter(|k| keys.get(k).is_none()).cloned().collect())
            .unwrap_or_default();
        for k in gone {
            self.runtime.metrics.forget_key(k.namespace.as_deref().unwrap_or_default(), &k.name);
            if let Ok(mut r) = self.reported.lock() {
                r.remove(&k);
            }
        }
    }
}

/// The ApiKey cache: shared with the RateLimitPolicy controller, filled by this controller polling its events.
pub struct KeyCache<S> {
    pub store: Store<ApiKey>,
    pub ready: cache::Ready,
    pub events: S,
}

/// Runs the controller until `launch.shutdown` completes; `keys` is the ApiKey cache of the same scope (see
/// [`cache::reflected`]).
pub async fn run<S, F>(ctx: Arc<Context>, keys: KeyCache<S>, launch: Launch<F>)
where
    S: futures::Stream<Item = Result<watcher::Event<ApiKey>, watcher::Error>> + Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Launch { scope: namespace, concurrency, synced, shutdown } = launch;
    let _ = ctx.lanes.set(priority::Lanes::new(concurrency));
    let (retry_tx, retry_rx) = futures::channel::mpsc::unbounded();
    let (lane, lane_task) = follow::start(&ctx, usize::from(concurrency), retry_tx);
    let _ = ctx.lane.set(lane);
    let concurrency = concurrency.saturating_add(priority::REVOCATION_SLOTS);
    let client = ctx.runtime.client.clone();
    let shutdown = crate::runtime::drain::Shutdown::new(shutdown);
    let policies: Api<RateLimitPolicy> = cache::scoped(&client, namespace.as_deref());
    let (policy_reader, policies_ready, policy_events) =
        cache::reflected(policies, watcher::Config::default().any_semantic());
    let _ = ctx.policies.set((policy_reader, policies_ready.clone()));
    let KeyCache { store: keys, ready: keys_ready, events: key_events } = keys;
    // NB: only what this controller acts on triggers it: the spec (generation), annotations (rotation requests),
    // deletion. Status writes (its own, and the RateLimitPolicy controller's usage) do not.
    let triggers = key_events.applied_objects().predicate_filter(trigger_hash, Default::default());
    let housekeeping = tokio::spawn(housekeeping(ctx.clone(), keys.clone(), keys_ready, policies_ready, synced));
    let store = keys.clone();
    let controller = Controller::for_stream(triggers, keys)
        .owns_stream(secret_triggers(&ctx, &client, namespace.as_deref()))
        .watches_stream(policies_come_and_go(policy_events), move |policy| members(&store, &policy))
        .reconcile_on(retry_rx);
    crate::runtime::drive(controller, reconcile, error_policy, ctx.clone(), (concurrency, shutdown), "ApiKey").await;
    housekeeping.abort();
    flush_lane(&ctx, lane_task).await;
}

/// Writes what the low lane still holds (bounded), then stops it.
async fn flush_lane(ctx: &Context, task: tokio::task::JoinHandle<()>) {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    if ctx.lane.get().is_some_and(|l| l.send(follow::Job::Flush(done_tx)).is_ok()) {
        let _ = tokio::time::timeout(crate::runtime::WRITE_TIMEOUT, done_rx).await;
    }
    task.abort();
}

/// Secret events that may need a reconcile: metadata-only and label-filtered (Secret data never enters the watch
/// cache), without the versions this controller wrote or already checked.
fn secret_triggers(
    ctx: &Arc<Context>,
    client: &kube::Client,
    namespace: Option<&str>,
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    let secrets: Api<PartialObjectMeta<Secret>> = cache::scoped(client, namespace);
    let cfg = watcher::Config::default().labels(&format!("{}={}", book::MANAGED_BY_LABEL, book::MANAGED_BY));
    let own = ctx.clone();
    watcher(secrets, cfg).default_backoff().filter_map(move |event| {
        futures::future::ready(match event {
            // NB: a version this controller wrote (or already checked) was handled by the reconcile that made it;
            // reconciling again for it would only re-read, on a cached ApiKey whose status may not be in yet.
            // NB: a change seen live may be a tamper (its reconcile goes first); the initial list is just the
            // start-up.
            Ok(watcher::Event::Apply(s)) if !own.verified_meta(&s) => Some(Ok(own.suspect_owner(s))),
            Ok(watcher::Event::InitApply(s)) if !own.verified_meta(&s) => Some(Ok(s)),
            Ok(watcher::Event::Apply(_) | watcher::Event::InitApply(_)) => None,
            Ok(watcher::Event::Delete(s)) => Some(Ok(own.suspect_owner(s))),
            Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
            Err(e) => Some(Err(e)),
        })
    })
}

/// Policies that appeared (a new uid) or were deleted: the keys that reference them change readiness.
fn policies_come_and_go(
    events: impl futures::Stream<Item = Result<watcher::Event<RateLimitPolicy>, watcher::Error>> + Send + 'static,
) -> impl futures::Stream<Item = Result<RateLimitPolicy, watcher::Error>> + Send + 'static {
    let mut seen: HashSet<String> = HashSet::new();
    events.filter_map(move |ev| {
        futures::future::ready(match ev {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                seen.insert(p.uid().unwrap_or_default()).then_some(Ok(p))
            }
            Ok(watcher::Event::Delete(p)) => {
                seen.remove(&p.uid().unwrap_or_default());
                Some(Ok(p))
            }
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
    })
}

/// The keys that reference `policy`.
fn members(keys: &Store<ApiKey>, policy: &RateLimitPolicy) -> Vec<ObjectRef<ApiKey>> {
    let (ns, name) = (policy.namespace(), policy.name_any());
    keys.state()
        .into_iter()
        .filter(|k| k.namespace() == ns && k.spec.rate_limit_policy_ref.as_ref().is_some_and(|r| r.name == name))
        .map(|k| ObjectRef::from_obj(k.as_ref()))
        .collect()
}

/// Signals `synced` once both caches are in; then, every 30 s, deleted keys leave the metrics.
async fn housekeeping(
    ctx: Arc<Context>,
    keys: Store<ApiKey>,
    keys_ready: cache::Ready,
    policies_ready: cache::Ready,
    synced: tokio::sync::oneshot::Sender<()>,
) {
    if keys_ready.wait().await {
        policies_ready.wait().await;
    }
    tracing::debug!("ApiKey controller caches synced");
    let _ = synced.send(());
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        ctx.forget_deleted(&keys);
    }
}

/// A number in [0, 1) fixed per key, to spread the retries of keys turned away together.
fn spread(k: &ApiKey) -> f64 {
    spread_of(k.metadata.uid.as_deref().unwrap_or_default())
}

fn spread_of(uid: &str) -> f64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(uid.as_bytes());
    f64::from(u16::from_be_bytes([d[0], d[1]])) / 65536.0
}

/// What a change must alter to trigger a reconcile: generation, annotations, deletion, a suspension for abuse
/// turning on or off (the RateLimitPolicy controller's condition in the status), and the traffic on the previous key
/// starting or stopping (`status.usage.previousKey`).
fn trigger_hash(k: &ApiKey) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let m = &k.metadata;
    let abused = crate::ratelimit::key_usage::abuse(k).is_some();
    // Traffic on the previous key starting or stopping may retire it early or keep it longer.
    let usage = k.status.as_ref().and_then(|s| s.usage.as_ref());
    let previous = usage.and_then(crate::ratelimit::key_usage::previous_state);
    (m.generation, &m.annotations, m.deletion_timestamp.is_some(), abused, previous).hash(&mut h);
    Some(h.finish())
}

fn error_policy(obj: Arc<ApiKey>, err: &Error, ctx: Arc<Context>) -> Requeue {
    crate::runtime::error_policy(obj.as_ref(), err, &ctx.runtime)
}

#[tracing::instrument(skip_all, fields(namespace = obj.namespace().as_deref(), name = %obj.name_any()))]
async fn reconcile(obj: Arc<ApiKey>, ctx: Arc<Context>) -> Result<Requeue, Error> {
    let _permit = match ctx.lanes.get().map(|l| l.admit(&obj, ctx.runtime.now(), spread(&obj))) {
        Some(priority::Admission::Later(wait)) => return Ok(Requeue::requeue(wait)),
        Some(priority::Admission::Go(permit)) => permit,
        None => None,
    };
    crate::runtime::wrap(obj.as_ref(), &ctx.runtime, async {
        let optimistic = obj.status.is_none();
        let result = reconcile_key(&obj, &ctx, optimistic).await;
        match result {
            // The Secret existed after all (a crash between its create and the first status write, or someone
            // else's Secret of that name): read it and decide again.
            Err(Error::Secret { op: "create", source, .. }) if optimistic && is_conflict(&source) => {
                tracing::debug!("the Secret exists already; reading it");
                reconcile_key(&obj, &ctx, false).await
            }
            result => result,
        }
    })
    .await
}

/// One reconcile: observe → decide → confirm a requested rotation → plan the write → apply it → restarts → status.
async fn reconcile_key(apikey: &ApiKey, ctx: &Context, optimistic: bool) -> Result<Requeue, Error> {
    if observe::deleting(apikey) {
        // Garbage collection removes the Secret with its owner.
        return Ok(Requeue::await_change());
    }
    // NB: whole seconds, the precision of metav1.Time: the rotation time in the Secret and in status must agree.
    let now = ctx.runtime.now();
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let mut o = observe::facts(apikey, ctx).ok_or(Error::MissingMetadata)?;
    // A key seen for the first time (no status) almost never has a Secret yet: when the decision on a missing
    // Secret is to issue, the read is skipped and the create tells whether it exists after all (409: read, decide
    // again). Saves a request per new key, at the API server's limit on a cold start.
    let decide =
        |o: &Observed| plan::decide(&plan::inputs(o, &apikey.spec, now), o.rotation.as_ref().map_err(Clone::clone));
    let decision = match optimistic.then(|| decide(&o)).filter(Decision::is_first_issue) {
        Some(assumed) => assumed,
        None => {
            observe::read_secret(ctx, apikey, &mut o, now).await?;
            decide(&o)
        }
    };
    log_decision(apikey, &o, &decision);
    if matches!(decision.action, Action::Rotate { manual: true }) && !observe::request_is_current(ctx, &o).await? {
        tracing::debug!("the cached ApiKey is behind its rotation request; deciding again once it catches up");
        return Ok(Requeue::requeue(Duration::from_millis(500)));
    }
    let book = match write_secret(ctx, apikey, &mut o, &decision.action, now).await? {
        Some(book) => Some(book),
        None => o.book().cloned(),
    };
    apply::tidy_previous(ctx, &o, book.as_ref()).await?;
    if decision.revokes() {
        apply::revoke_others(ctx, &o).await?;
    }
    let just_rotated = matches!(decision.action, Action::Rotate { .. });
    let restart_wait = match &book {
        Some(b) => apply::restarts(ctx, apikey, &o.ns, b, just_rotated, now).await?,
        None => None,
    };
    let mut outcome = plan::outcome(apikey, &o, &decision, book.as_ref(), now);
    outcome.requeue_at = [outcome.requeue_at, restart_wait, ctx.recheck_at(&o, now)].into_iter().flatten().min();
    apply::status(ctx, apikey, &o, &outcome).await?;
    Ok(crate::runtime::requeue_at(outcome.requeue_at, now))
}

/// Generates a new key when the action needs one, reads the material it keeps, plans the write and applies it.
async fn write_secret(
    ctx: &Context,
    apikey: &ApiKey,
    o: &mut Observed,
    action: &Action,
    now: Timestamp,
) -> Result<Option<Book>, Error> {
    let new_key = match action {
        Action::Issue(_) | Action::Rotate { .. } => {
            Some(keys::generate(&apikey.spec.format.clone().unwrap_or_default(), &mut OsRandom)?)
        }
        _ => None,
    };
    let (kept, kept_previous) = observe::kept_material(ctx, o, action.keeps_material()).await?;
    let grace = o.rotation.as_ref().map(|p| p.grace_period_at(now, &o.jitter_key)).unwrap_or_default();
    let material = plan::Material { new_key, kept, kept_previous };
    match plan::write(apikey, o, action, &material, (grace, &ctx.sealer), now) {
        Some(write) => apply::secret(ctx, apikey, o, write).await.map(Some),
        None => Ok(None),
    }
}

fn log_decision(apikey: &ApiKey, o: &Observed, decision: &Decision) {
    if !matches!(decision.action, Action::Nothing) {
        tracing::debug!(
            action = ?decision.action,
            request = o.rotate_request.as_deref(),
            answered = ?o.book().and_then(|b| b.rotate_request.as_deref()),
            secret_version = o.secret_version.as_deref(),
            apikey_version = apikey.resource_version().as_deref(),
            "decided"
        );
    }
}

#[cfg(test)]
mod scripted_tests;
#[cfg(test)]
mod tests;
