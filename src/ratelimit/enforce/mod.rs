//! `spec.enforce`: Keyward renders and owns one Envoy Gateway `BackendTrafficPolicy` per RateLimitPolicy (same
//! name and namespace, owned by it) that limits every member key to the limit in force, matched on the client id
//! Envoy Gateway's API-key authentication forwards — never on the key. Runs on every reconcile of the policy:
//! look (discovery, the cache, a GET when the cache has no owned object of that name) → render and decide (pure:
//! [`render`], [`plan`]) → apply only when the stored object does not hold the render → conditions, limit, events.
//!
//! Safety: an object of that name that this policy does not control is never written (`EnforcementConflict`); only
//! an object this policy controls is deleted (uid precondition); without the CRD nothing is written and the policy
//! says so, and the rest of the reconcile goes on.

mod apply;
pub mod plan;
pub mod render;
pub mod status;

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use self::plan::{Crd, Decision, Seen, Write};
use super::{CONTROLLER, Context, limits::Effective};
use crate::api::ApiKey;
use crate::api::ratelimit::{Enforce, RateLimitPolicy};
use crate::runtime::cache;
use crate::runtime::conditions::Desired;

/// Field manager of the BackendTrafficPolicy applies.
pub const MANAGER: &str = "keyward/enforce";
/// How long a missing CRD is believed missing before discovery asks again.
pub const REDISCOVER: Duration = Duration::from_secs(30);
/// How long discovery of the gateway's API may take.
const DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// A `gateway.envoyproxy.io/v1alpha1` BackendTrafficPolicy: its metadata and its spec as JSON (Keyward reads only
/// what it rendered, compared with [`render::contains`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Btp {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
}

impl Resource for Btp {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        Cow::Borrowed(render::KIND)
    }

    fn group(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("gateway.envoyproxy.io")
    }

    fn version(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("v1alpha1")
    }

    fn plural(_: &()) -> Cow<'_, str> {
        Cow::Borrowed("backendtrafficpolicies")
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What the enforcement step gives the policy's status: the `Enforced` and `EnforcementConflict` conditions (none
/// without `enforce`) and `status.enforcedLimit`.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub conditions: Vec<Desired>,
    pub enforced_limit: Option<String>,
}

/// The gateway's API as the controller knows it: whether the CRD is served (asked at most every [`REDISCOVER`]
/// while it is missing) and, once it is, a cache of Keyward's BackendTrafficPolicies in the controller's scope
/// whose events wake the policy that owns them.
pub struct Gateway {
    client: kube::Client,
    scope: Option<String>,
    wake: UnboundedSender<ObjectRef<RateLimitPolicy>>,
    discovery: tokio::sync::Mutex<Discovery>,
}

enum Discovery {
    Unknown,
    Missing(Instant),
    Present { store: Store<Btp>, _watch: AbortOnDrop },
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Gateway {
    /// The gateway's API for the controller of `scope` (a namespace or all); BackendTrafficPolicy events wake their
    /// owner through `wake`.
    pub fn new(client: kube::Client, scope: Option<String>, wake: UnboundedSender<ObjectRef<RateLimitPolicy>>) -> Self {
        Gateway { client, scope, wake, discovery: tokio::sync::Mutex::new(Discovery::Unknown) }
    }

    /// Whether the CRD is served, and the cache once it is (the watch starts the first time it is found).
    async fn crd(&self) -> (Crd, Option<Store<Btp>>) {
        let mut d = self.discovery.lock().await;
        match &*d {
            Discovery::Present { store, .. } => return (Crd::Present, Some(store.clone())),
            Discovery::Missing(at) if at.elapsed() < REDISCOVER => return (Crd::Missing, None),
            _ => {}
        }
        let api_version = format!("{}/{}", Btp::group(&()), Btp::version(&()));
        // NB: bounded: every enforcing policy waits on this lock while discovery runs.
        let asked = tokio::time::timeout(DISCOVERY_TIMEOUT, self.client.list_api_group_resources(&api_version));
        let found = match asked.await {
            Ok(Ok(list)) => list.resources.iter().any(|r| r.name == Btp::plural(&())),
            Ok(Err(kube::Error::Api(s))) if s.code == 404 => false,
            Ok(Err(e)) => return (Crd::Unknown(crate::runtime::describe(&e)), None),
            Err(_) => return (Crd::Unknown(format!("no answer within {DISCOVERY_TIMEOUT:?}")), None),
        };
        if !found {
            *d = Discovery::Missing(Instant::now());
            return (Crd::Missing, None);
        }
        let store = self.watch(&mut d);
        (Crd::Present, Some(store))
    }

    /// Starts the watch of Keyward's BackendTrafficPolicies; their events wake their owner policy.
    fn watch(&self, d: &mut Discovery) -> Store<Btp> {
        let api = cache::scoped::<Btp>(&self.client, self.scope.as_deref());
        let selector = format!("{}={}", crate::apikey::book::MANAGED_BY_LABEL, crate::apikey::book::MANAGED_BY);
        let (store, _ready, events) = cache::reflected(api, watcher::Config::default().labels(&selector));
        let wake = self.wake.clone();
        let task = tokio::spawn(events.for_each(move |event| {
            match event {
                Ok(watcher::Event::Apply(b) | watcher::Event::Delete(b)) => {
                    if let Some(owner) = owner_policy(&b) {
                        let _ = wake.send(owner);
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "watching BackendTrafficPolicies failed; retrying"),
            }
            futures::future::ready(())
        }));
        *d = Discovery::Present { store: store.clone(), _watch: AbortOnDrop(task) };
        store
    }

    /// Forgets the discovery (the CRD was removed): the next reconcile asks again.
    async fn forget(&self) {
        *self.discovery.lock().await = Discovery::Unknown;
    }

    /// What the API server holds under `name`: the cache when it has this policy's object, else a GET (the cache
    /// sees only objects with Keyward's label).
    async fn lookup(&self, store: &Store<Btp>, ns: &str, name: &str, uid: &str) -> Result<Seen, String> {
        if let Some(b) = store.get(&ObjectRef::new(name).within(ns))
            && controls(&b, uid)
        {
            return Ok(Seen::Ours(Box::new((*b).clone())));
        }
        match apply::get(&self.client, ns, name).await {
            Ok(None) => Ok(Seen::Missing),
            Ok(Some(b)) if controls(&b, uid) => Ok(Seen::Ours(Box::new(b))),
            Ok(Some(b)) => Ok(Seen::Foreign { owner: controller_of(&b) }),
            Err(e) => Err(crate::runtime::describe(&e)),
        }
    }
}

/// Whether `uid` is `b`'s controller.
fn controls(b: &Btp, uid: &str) -> bool {
    b.owner_references().iter().any(|o| o.controller == Some(true) && o.uid == uid)
}

/// `<Kind> <name>` of `b`'s controller, if any.
fn controller_of(b: &Btp) -> Option<String> {
    b.owner_references().iter().find(|o| o.controller == Some(true)).map(|o| format!("{} {}", o.kind, o.name))
}

/// The RateLimitPolicy that controls `b`, if one does.
fn owner_policy(b: &Btp) -> Option<ObjectRef<RateLimitPolicy>> {
    let o = b.owner_references().iter().find(|o| o.controller == Some(true) && o.kind == "RateLimitPolicy")?;
    Some(ObjectRef::new(&o.name).within(&b.namespace()?))
}

/// The enforcement step of one reconcile at the effective limit `limit`: with `enforce`, render, apply when the
/// stored object differs, publish the events; without it, delete the object this policy rendered before.
pub async fn step(ctx: &Context, policy: &RateLimitPolicy, ns: &str, limit: &Effective) -> Outcome {
    let Some(gateway) = ctx.gateway.get() else { return Outcome::default() };
    let uid = policy.uid().unwrap_or_default();
    let Some(enforce) = policy.spec.enforce.as_ref() else {
        withdraw(ctx, gateway, policy, ns, &uid).await;
        return Outcome::default();
    };
    let decision = decide(ctx, gateway, policy, enforce, (ns, &uid), limit).await;
    let decision = match &decision.write {
        Write::Nothing => decision,
        Write::Apply(body) => {
            ctx.runtime.metrics.api_write(CONTROLLER, render::KIND);
            match apply::apply(&ctx.runtime.client, ns, &policy.name_any(), body).await {
                Ok(()) => decision,
                Err(e) => {
                    let reason = apply::reason(&e);
                    if reason == plan::reason::GATEWAY_CRD_MISSING {
                        gateway.forget().await;
                    }
                    let message = format!("cannot apply BackendTrafficPolicy: {}", crate::runtime::describe(&e));
                    tracing::warn!(reason, error = %message, "enforcement not applied; the next reconcile retries");
                    plan::failed(decision, reason, message, &current(policy))
                }
            }
        }
    };
    for n in &decision.events {
        ctx.runtime.publish_note(policy, n.type_, n.reason, n.note.clone()).await;
    }
    Outcome { conditions: decision.conditions, enforced_limit: decision.enforced_limit }
}

fn current(policy: &RateLimitPolicy) -> crate::api::ratelimit::RateLimitPolicyStatus {
    policy.status.clone().unwrap_or_default()
}

/// Reads what the decision needs (discovery, members, the stored object) and decides.
async fn decide(
    ctx: &Context,
    gateway: &Gateway,
    policy: &RateLimitPolicy,
    enforce: &Enforce,
    (ns, uid): (&str, &str),
    effective: &Effective,
) -> Decision {
    let name = policy.name_any();
    let limit = match render::gateway_limit(effective) {
        Ok(l) => l,
        Err(message) => return plan::invalid_limit(message),
    };
    let members: Vec<render::Member> =
        super::observe::members(ctx, policy, ns).await.iter().filter_map(|k| render::member(k)).collect();
    let owner = render::Owner { name: &name, namespace: ns, uid };
    let rendered = render::render(&owner, enforce, &limit, &members);
    let (crd, store) = gateway.crd().await;
    let seen = match &store {
        Some(store) => gateway.lookup(store, ns, &name, uid).await,
        None => Ok(Seen::Missing),
    };
    let current = current(policy);
    plan::decide(&plan::Inputs {
        name: &name,
        header: &enforce.client_id_header,
        effective,
        limit: &limit,
        render: &rendered,
        crd: &crd,
        seen: &seen,
        current: &current,
    })
}

/// `enforce` is not (or no longer) set: deletes the BackendTrafficPolicy this policy controls, if there is one.
/// Looks only when the status says the policy enforced before or the cache holds its object: a policy that never
/// enforced costs no request.
async fn withdraw(ctx: &Context, gateway: &Gateway, policy: &RateLimitPolicy, ns: &str, uid: &str) {
    let name = policy.name_any();
    let status = current(policy);
    let enforced_before =
        status.enforced_limit.is_some() || status.conditions.iter().any(|c| c.type_ == super::condition::ENFORCED);
    let cached = match &*gateway.discovery.lock().await {
        Discovery::Present { store, .. } => store.get(&ObjectRef::new(&name).within(ns)),
        _ => None,
    };
    if !enforced_before && !cached.as_ref().is_some_and(|b| controls(b, uid)) {
        return;
    }
    let (Crd::Present, Some(store)) = gateway.crd().await else { return };
    if let Ok(Seen::Ours(btp)) = gateway.lookup(&store, ns, &name, uid).await {
        ctx.runtime.metrics.api_write(CONTROLLER, render::KIND);
        // NB: the precondition is the object's own uid: one created since under that name is not deleted.
        match apply::delete(&ctx.runtime.client, ns, &name, &btp.uid().unwrap_or_default()).await {
            Ok(()) => tracing::info!(backendtrafficpolicy = %name, "enforce removed: deleted the BackendTrafficPolicy"),
            Err(e) => {
                tracing::warn!(error = %crate::runtime::describe(&e), "could not delete the BackendTrafficPolicy; retrying later")
            }
        }
    }
}

/// Who a key is to the gateway: its policy and its client ids (`None` while it is being deleted).
type Membership = Option<(ObjectRef<RateLimitPolicy>, Option<Vec<String>>)>;

fn membership(k: &ApiKey) -> Membership {
    if k.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let policy = k.spec.rate_limit_policy_ref.as_ref()?;
    let at = ObjectRef::new(&policy.name).within(&k.namespace()?);
    Some((at, render::member(k).map(|m| m.client_ids)))
}

/// `events` (the ApiKey watch) unchanged, waking through `wake` the policies whose members changed: a key created,
/// deleted, moved to another policy, or whose client ids changed wakes its old and its new policy.
pub fn wake_on_membership<S>(
    events: S,
    wake: UnboundedSender<ObjectRef<RateLimitPolicy>>,
) -> impl Stream<Item = Result<watcher::Event<ApiKey>, watcher::Error>> + Send + 'static
where
    S: Stream<Item = Result<watcher::Event<ApiKey>, watcher::Error>> + Send + 'static,
{
    let mut seen: HashMap<ObjectRef<ApiKey>, Membership> = HashMap::new();
    events.inspect(move |event| {
        let (key, now) = match event {
            Ok(watcher::Event::Apply(k) | watcher::Event::InitApply(k)) => (ObjectRef::from_obj(k), membership(k)),
            Ok(watcher::Event::Delete(k)) => (ObjectRef::from_obj(k), None),
            _ => return,
        };
        let before = if now.is_some() { seen.insert(key, now.clone()) } else { seen.remove(&key) };
        let before = before.flatten();
        if before != now {
            let mut policies: Vec<_> = [before, now].into_iter().flatten().map(|(p, _)| p).collect();
            policies.dedup();
            for policy in policies {
                let _ = wake.send(policy);
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, policy: Option<&str>, gateway: Option<&str>) -> ApiKey {
        let mut spec = serde_json::json!({});
        if let Some(p) = policy {
            spec["rateLimitPolicyRef"] = serde_json::json!({"name": p});
        }
        if let Some(g) = gateway {
            spec["gateway"] = g.into();
        }
        let mut k = ApiKey::new(name, serde_json::from_value(spec).expect("spec"));
        k.metadata.namespace = Some("shop".into());
        k
    }

    /// The policies woken by `events`, in order.
    async fn woken(events: Vec<watcher::Event<ApiKey>>) -> Vec<String> {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = wake_on_membership(futures::stream::iter(events.into_iter().map(Ok)), tx);
        let _: Vec<_> = stream.collect().await;
        let mut out = Vec::new();
        while let Ok(r) = rx.try_recv() {
            out.push(r.name);
        }
        out
    }

    #[tokio::test]
    async fn membership_changes_wake_the_old_and_the_new_policy_and_nothing_else_does() {
        use watcher::Event::{Apply, Delete, InitApply};
        let a = key("a", Some("gold"), Some("EnvoyGateway"));
        let mut a_status = a.clone();
        a_status.metadata.annotations = Some([("x".to_string(), "y".to_string())].into());
        let events = vec![
            InitApply(a.clone()),                   // joins gold
            Apply(a_status),                        // nothing a gateway sees changed
            Apply(key("a", Some("gold"), None)),    // client ids changed
            Apply(key("a", Some("silver"), None)),  // moved: gold and silver
            Apply(key("b", None, None)),            // no policy
            Delete(key("a", Some("silver"), None)), // leaves silver
        ];
        assert_eq!(woken(events).await, ["gold", "gold", "gold", "silver", "silver"]);
    }
}
