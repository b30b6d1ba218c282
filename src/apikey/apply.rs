//! Apply: the only writes of the ApiKey controller. The Secret first, so that everything after it (restarts,
//! status) is derived from what was persisted; then the rollout restarts; then the status, only when it changed.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;

use super::book::Book;
use super::events::event_for;
use super::follow::Job;
use super::observe::Observed;
use super::observe::PreviousState;
use super::plan::{Action, Outcome, PreviousWrite, SecretWrite};
use super::{CONTROLLER, Context, Error, MANAGER, restart, status};
use crate::api::ApiKey;
use crate::crashpoint::{self, Point};
use crate::metrics::KeyFigures;
use crate::runtime::events::{Event, EventType};
use crate::runtime::within_timeout;

/// Writes the Secret as planned and publishes its event; returns the bookkeeping now persisted.
///
/// NB: the write carries the resourceVersion the DECISION was based on, not a later read: if the Secret changed in
/// between (another instance rotated), it fails with 409 and the next reconcile decides again. Conditioning on a
/// later read would let a stale decision rotate a second time and cut the legitimate previous key's grace short.
pub async fn secret(ctx: &Context, apikey: &ApiKey, o: &Observed, mut write: SecretWrite) -> Result<Book, Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.runtime.client.clone(), &o.ns);
    if let Some(previous) = write.previous.take() {
        put_previous(ctx, &secrets, o, previous).await?;
    }
    ctx.runtime.metrics.api_write(CONTROLLER, "Secret");
    crashpoint::before_secret_write(&write.action);
    let written = {
        let _busy = ctx.lane.get().map(|l| l.secret_writes.start());
        put(&secrets, o, &write).await
    };
    wipe(&mut write.secret);
    let version = match written {
        Ok(mut written) => {
            wipe(&mut written);
            written.metadata.resource_version
        }
        Err(source) if matches!(write.action, Action::Remove(_)) => revoke_by_deletion(&secrets, o, source).await?,
        Err(source) => {
            let op = if write.create { "create" } else { "update" };
            return Err(Error::Secret { op, ns: o.ns.clone(), name: o.secret_name.clone(), source });
        }
    };
    crashpoint::after_secret_write(&write.action);
    ctx.mark_verified(&o.ns, &o.secret_name, version.as_deref());
    if let Some(kind) = write.rotation {
        ctx.runtime.metrics.rotation(kind);
    }
    // NB: a reseal changes nothing a reader cares about (it runs once per key after an upgrade or a seal key change).
    if !matches!(write.action, Action::Reseal) {
        publish(ctx, apikey, event_for(&write.action, &write.book, &o.secret_name)).await;
    }
    Ok(write.book)
}

/// Writes the previous key's own Secret (before the main Secret: a crash between the two leaves the previous key
/// in both places, never in none), conditional on the version observed.
async fn put_previous(
    ctx: &Context,
    secrets: &Api<Secret>,
    o: &Observed,
    mut write: PreviousWrite,
) -> Result<(), Error> {
    let name = o.previous_name();
    let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    ctx.runtime.metrics.api_write(CONTROLLER, "Secret");
    crashpoint::hit(Point::BeforePreviousSecretWrite);
    let busy = ctx.lane.get().map(|l| l.secret_writes.start());
    let written = if write.create {
        within_timeout(secrets.create(&pp, &write.secret)).await
    } else {
        within_timeout(secrets.replace(&name, &pp, &write.secret)).await
    };
    drop(busy);
    wipe(&mut write.secret);
    let op = if write.create { "create" } else { "update" };
    let mut written = written.map_err(|source| Error::Secret { op, ns: o.ns.clone(), name: name.clone(), source })?;
    wipe(&mut written);
    crashpoint::hit(Point::AfterPreviousSecretWrite);
    ctx.mark_verified(&o.ns, &name, written.metadata.resource_version.as_deref());
    Ok(())
}

/// Deletes the previous key's own Secret once the persisted bookkeeping names no previous key kept there (grace
/// over, a new key issued, a revocation, a shape that keeps the previous key elsewhere), or when a crash left one
/// behind. Nothing while the spec does not resolve: a bad spec loses nothing.
pub async fn tidy_previous(ctx: &Context, o: &Observed, book: Option<&Book>) -> Result<(), Error> {
    let PreviousState::Ours { version, .. } = &o.previous else { return Ok(()) };
    let keep = book.is_some_and(Book::has_previous) && o.wants_own();
    if keep || o.layout.is_none() {
        return Ok(());
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.runtime.client.clone(), &o.ns);
    let name = o.previous_name();
    let dp = DeleteParams {
        preconditions: Some(Preconditions { resource_version: version.clone(), uid: None }),
        ..DeleteParams::default()
    };
    ctx.runtime.metrics.api_write(CONTROLLER, "Secret");
    crashpoint::hit(Point::BeforePreviousSecretRemoval);
    match within_timeout(secrets.delete(&name, &dp)).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {}
        Err(source) => return Err(Error::Secret { op: "delete", ns: o.ns.clone(), name, source }),
    }
    crashpoint::hit(Point::AfterPreviousSecretRemoval);
    Ok(())
}

/// Creates or replaces the Secret, within the write timeout.
async fn put(secrets: &Api<Secret>, o: &Observed, write: &SecretWrite) -> Result<Secret, kube::Error> {
    let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    if write.create {
        within_timeout(secrets.create(&pp, &write.secret)).await
    } else {
        within_timeout(secrets.replace(&o.secret_name, &pp, &write.secret)).await
    }
}

/// A revocation whose update was refused: an `immutable` Secret (the update is invalid) is deleted instead, on
/// condition that it is still the version decided on; anything else (an admission policy, a webhook, RBAC) is
/// `RevocationBlocked`, retried with backoff; a conflict stays a race to decide again.
async fn revoke_by_deletion(
    secrets: &Api<Secret>,
    o: &Observed,
    refused: kube::Error,
) -> Result<Option<String>, Error> {
    let blocked = |source| Error::RevocationBlocked { ns: o.ns.clone(), name: o.secret_name.clone(), source };
    match &refused {
        kube::Error::Api(s) if s.code == 409 => {
            return Err(Error::Secret { op: "update", ns: o.ns.clone(), name: o.secret_name.clone(), source: refused });
        }
        kube::Error::Api(s) if s.code == 422 => {}
        _ => return Err(blocked(refused)),
    }
    let mut current = within_timeout(secrets.get(&o.secret_name)).await.map_err(blocked)?;
    let immutable = current.immutable == Some(true);
    wipe(&mut current);
    if !immutable || current.metadata.resource_version != o.secret_version {
        return Err(blocked(refused));
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions { resource_version: o.secret_version.clone(), uid: None }),
        ..DeleteParams::default()
    };
    tracing::info!(secret = %o.secret_name, "the Secret is immutable; deleting it to revoke the key");
    within_timeout(secrets.delete(&o.secret_name, &dp)).await.map_err(blocked)?;
    Ok(None)
}

/// Deletes every other Secret this ApiKey controls (found by owner uid, whatever its name or labels: a Secret of
/// a name the key no longer uses, written before `secretName` became immutable), so a revoked key is gone
/// everywhere. Runs only for a revoked key.
pub async fn revoke_others(ctx: &Context, o: &Observed) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.runtime.client.clone(), &o.ns);
    let blocked = |name: &str, source| Error::RevocationBlocked { ns: o.ns.clone(), name: name.to_string(), source };
    let list = secrets.list_metadata(&ListParams::default()).await.map_err(|e| blocked(&o.secret_name, e))?;
    let ours = |s: &PartialObjectMeta<Secret>| {
        s.metadata.owner_references.iter().flatten().any(|r| r.controller == Some(true) && r.uid == o.uid)
    };
    for s in list.items.iter().filter(|s| ours(s) && s.metadata.name.as_deref() != Some(o.secret_name.as_str())) {
        let name = s.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: s.metadata.uid.clone(), resource_version: None }),
            ..DeleteParams::default()
        };
        tracing::info!(secret = %name, "deleting another Secret of this revoked key");
        match within_timeout(secrets.delete(&name, &dp)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(blocked(&name, e)),
        }
    }
    Ok(())
}

/// Overwrites the key material a Secret value holds in this process's memory.
pub fn wipe(secret: &mut Secret) {
    use zeroize::Zeroize;
    for value in secret.data.iter_mut().flat_map(|d| d.values_mut()) {
        value.0.zeroize();
    }
}

/// Restarts the workloads listed in `rolloutRestart` that have not been restarted for the key in `book`; returns
/// when to look again if a restart waits for the debounce window. A missing target is reported only right after a
/// rotation, so an idle reconcile publishes nothing.
pub async fn restarts(
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
        let current = restart::current(&ctx.runtime.client, ns, t).await.map_err(rerr)?;
        let note = match current {
            None if just_rotated => Some((
                EventType::Warning,
                "RolloutTargetMissing",
                format!("{:?} {} does not exist; nothing to restart", t.kind, t.name),
            )),
            None => None,
            Some(cur) => match restart::plan(cur.as_deref(), at, book.rotation_count, now) {
                restart::RestartPlan::UpToDate => None,
                restart::RestartPlan::WaitUntil(w) => {
                    wait = Some(wait.map_or(w, |x| x.min(w)));
                    None
                }
                restart::RestartPlan::Restart => {
                    ctx.runtime.metrics.api_write(CONTROLLER, "RolloutRestart");
                    crashpoint::hit(Point::BeforeRolloutRestart);
                    within_timeout(restart::restart(&ctx.runtime.client, ns, t, &at.to_string()))
                        .await
                        .map_err(rerr)?;
                    crashpoint::hit(Point::AfterRolloutRestart);
                    let note = format!("restarted {:?} {} for the key issued at {at}", t.kind, t.name);
                    Some((EventType::Normal, "RolloutRestarted", note))
                }
            },
        };
        if let Some((type_, reason, note)) = note {
            let ev = Event {
                type_,
                reason: reason.into(),
                note: Some(note),
                action: "RolloutRestart".into(),
                secondary: None,
            };
            ctx.runtime.publish(apikey, ev).await;
        }
    }
    Ok(wait)
}

/// Reports the key's state in the metrics and writes the status when it differs from what this controller owns.
pub async fn status(ctx: &Context, apikey: &ApiKey, o: &Observed, outcome: &Outcome) -> Result<(), Error> {
    ctx.runtime.metrics.set_key(&o.ns, &o.name, figures(apikey, outcome));
    if let Ok(mut r) = ctx.reported.lock() {
        r.insert(ObjectRef::from_obj(apikey));
    }
    if status::owned(apikey.status.as_ref()) == outcome.status {
        return Ok(());
    }
    let job = Job::Status { key: ObjectRef::from_obj(apikey), status: Box::new(outcome.status.clone()) };
    if ctx.lane.get().is_none_or(|l| l.send(job).is_err()) {
        ctx.runtime.apply_status(&o.ns, &o.name, &outcome.status).await.map_err(|source| Error::Status {
            ns: o.ns.clone(),
            name: o.name.clone(),
            source,
        })?;
    }
    let was_in_use = apikey
        .status
        .as_ref()
        .is_some_and(|s| crate::ratelimit::key_usage::is_true(&s.conditions, status::PREVIOUS_KEY_IN_USE));
    if let Some(c) = outcome.in_use.as_ref().filter(|_| !was_in_use) {
        let ev = Event {
            type_: EventType::Warning,
            reason: c.type_.into(),
            note: Some(c.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        publish(ctx, apikey, ev).await;
    }
    Ok(())
}

/// Publishes an event on the key through the low lane (see [`super::follow`]), or inline without one.
async fn publish(ctx: &Context, apikey: &ApiKey, event: Event) {
    use kube::Resource as _;
    let job = Job::Event { regarding: Box::new(apikey.object_ref(&())), event: Box::new(event) };
    let unsent = match ctx.lane.get() {
        Some(lane) => lane.send(job).err(),
        None => Some(job),
    };
    if let Some(Job::Event { regarding, event }) = unsent {
        ctx.runtime.publish_to(&regarding, *event).await;
    }
}

/// What the metrics report of the key: its state and the times an alert may name.
fn figures(apikey: &ApiKey, outcome: &Outcome) -> KeyFigures {
    let ready = &outcome.ready;
    KeyFigures {
        state: if ready.status { "Ready" } else { ready.reason },
        ready: ready.status,
        reason: ready.reason,
        next_rotation: outcome.next_rotation,
        expires_at: apikey.spec.expires_at.as_ref().map(|t| t.0),
        last_rotation: outcome.status.last_rotation_time.as_ref().map(|t| t.0),
    }
}
