//! Observe: everything a reconcile reads, into one [`Observed`] value. The ApiKey's own facts (names, the rotation
//! request, the parsed rotation spec) cost nothing; the Secret is read as metadata only unless its data is needed
//! (a due write that keeps key material, or the fingerprint check of a version not yet verified).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::book::Book;
use super::layout::{self, Entries, Layout};
use super::seal::{self, Sealed, Sealer, Verdict};
use super::{Context, Error, secret};
use crate::api::ApiKey;
use crate::api::apikey::ROTATE_ANNOTATION;
use crate::keys::{self, KeyMaterial};
use crate::schedule::RotationPlan;

/// The Secret as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretState {
    /// No Secret of that name.
    Missing,
    /// A Secret of that name that this ApiKey does not control: never touched.
    Foreign,
    /// Our Secret, with its bookkeeping; `tampered` when its key material no longer matches its `key-id`.
    /// `reseal`: unchanged, but sealed by a previous seal key or not at all (written before seals): worth sealing.
    Managed { book: Book, tampered: bool, reseal: bool },
}

/// The previous key's own Secret (`<secretName>-previous`), looked at when the written or the wanted shape puts the
/// previous key there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PreviousState {
    /// No such Secret (or not looked at: neither shape has one).
    Absent,
    /// A Secret of that name that this ApiKey does not control: never touched.
    Foreign,
    /// Ours. `book`: the bookkeeping it was written with; `sound`: its seal verifies over that bookkeeping and its
    /// one key matches the previous fingerprint (false: edited or planted, treated like an edited key).
    Ours { book: Book, sound: bool, version: Option<String> },
}

/// What one reconcile knows about an ApiKey and its Secret.
pub struct Observed {
    pub ns: String,
    pub name: String,
    pub uid: String,
    /// The Secret's name (`spec.secretName` or the ApiKey's name).
    pub secret_name: String,
    /// `<namespace>/<name>/<uid>`: spreads jitter across keys.
    pub jitter_key: String,
    /// Value of the `keyward.dev/rotate` annotation on the cached ApiKey.
    pub rotate_request: Option<String>,
    /// Whether this ApiKey ever had a key (its status names one): a missing Secret then means it was deleted.
    pub had_key: bool,
    /// The parsed rotation spec, or why the spec (rotation or format) is invalid.
    pub rotation: Result<RotationPlan, String>,
    /// The Secret as read (or assumed missing on a first-seen key, when the read is skipped).
    pub secret: SecretState,
    /// The Secret's resourceVersion the decision is based on: every write is conditional on it.
    pub secret_version: Option<String>,
    /// The whole Secret, when it was read with its data.
    pub fetched: Option<Secret>,
    /// The shape the spec asks for, or `None` when it cannot be written (then `rotation` says why).
    pub layout: Option<Layout>,
    /// Where the keys sit in the Secret as written (its shape annotation; Keyward's original format without one).
    pub entries: Entries,
    /// Whether the Secret was written in another shape than the spec's: rewrite it.
    pub reshape: bool,
    /// The previous key's own Secret.
    pub previous: PreviousState,
    /// That Secret whole, when it was read with its data.
    pub previous_fetched: Option<Secret>,
    /// `rateLimitPolicyRef` names a policy that does not exist (known only once the policies are listed).
    pub policy_missing: bool,
    /// The message of a `SuspendedForAbuse` no person has cleared: the key is revoked while it holds.
    pub abuse: Option<String>,
    /// Traffic on the previous key, as the RateLimitPolicy controller last wrote it.
    pub previous_usage: Option<crate::api::apikey::PreviousKeyUsage>,
}

impl Drop for Observed {
    /// The whole Secret read (key material included) is wiped when the reconcile is done with it.
    fn drop(&mut self) {
        for full in [self.fetched.as_mut(), self.previous_fetched.as_mut()].into_iter().flatten() {
            super::apply::wipe(full);
        }
    }
}

impl Observed {
    /// The name of the previous key's own Secret.
    pub fn previous_name(&self) -> String {
        layout::previous_secret_name(&self.secret_name)
    }

    /// Whether the wanted shape keeps the previous key in its own Secret.
    pub fn wants_own(&self) -> bool {
        self.layout.as_ref().is_some_and(|l| l.entries.own)
    }

    /// The bookkeeping of the Secret as read, if it is ours.
    pub fn book(&self) -> Option<&Book> {
        match &self.secret {
            SecretState::Managed { book, .. } => Some(book),
            _ => None,
        }
    }
}

/// The ApiKey's own facts, before any read; the Secret is assumed missing until [`read_secret`]. `None` for an
/// object without namespace or uid.
pub fn facts(apikey: &ApiKey, ctx: &Context) -> Option<Observed> {
    let ns = apikey.namespace()?;
    let uid = apikey.uid()?;
    let name = apikey.name_any();
    let status = apikey.status.as_ref();
    let secret_name = secret::secret_name(&apikey.spec, &name).to_string();
    let layout = Layout::resolve(&apikey.spec, &name, &secret_name);
    Some(Observed {
        rotation: check_spec(apikey, &ctx.minimums).and_then(|r| layout.as_ref().map(|_| r).map_err(Clone::clone)),
        layout: layout.ok(),
        entries: Entries::default(),
        reshape: false,
        previous: PreviousState::Absent,
        previous_fetched: None,
        secret_name,
        jitter_key: format!("{ns}/{name}/{uid}"),
        rotate_request: apikey.annotations().get(ROTATE_ANNOTATION).cloned(),
        had_key: status.is_some_and(|s| s.key_id.is_some() || s.rotation_count.unwrap_or(0) > 0),
        secret: SecretState::Missing,
        secret_version: None,
        fetched: None,
        policy_missing: policy_missing(apikey, ctx, &ns),
        abuse: crate::ratelimit::key_usage::abuse(apikey).map(|c| c.message.clone()),
        previous_usage: status.and_then(|s| s.usage.as_ref()).and_then(|u| u.previous_key.clone()),
        ns,
        uid,
        name,
    })
}

/// The rotation spec and the key format, checked for what the schema cannot catch.
///
/// NB: a format the schema would refuse can still be stored (before a schema tightening): it is a bad spec like a
/// bad schedule (Ready=False InvalidSpec, the existing key kept), not a reconcile error retried forever.
fn check_spec(apikey: &ApiKey, minimums: &crate::minimums::Minimums) -> Result<RotationPlan, String> {
    let rotation = RotationPlan::from_spec_with(apikey.spec.rotation.as_ref(), minimums).map_err(|e| e.to_string())?;
    keys::ResolvedFormat::resolve(&apikey.spec.format.clone().unwrap_or_default()).map_err(|e| match e {
        keys::KeyError::InvalidSpec(m) => format!("format.{m}"),
        e => format!("format: {e}"),
    })?;
    Ok(rotation)
}

/// Whether the referenced RateLimitPolicy is known not to exist.
fn policy_missing(apikey: &ApiKey, ctx: &Context, ns: &str) -> bool {
    let Some(policy) = apikey.spec.rate_limit_policy_ref.as_ref() else { return false };
    let Some((store, ready)) = ctx.policies.get() else { return false };
    ready.is_ready() && store.get(&ObjectRef::new(&policy.name).within(ns)).is_none()
}

/// Reads the Secret: its metadata, or all of it when the status says a write that keeps key material is due (one
/// read instead of two when a thousand keys are due in the same second), and checks an unverified version's key
/// against its fingerprint.
pub(crate) async fn read_secret(ctx: &Context, apikey: &ApiKey, o: &mut Observed, now: Timestamp) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(ctx.runtime.client.clone(), &o.ns);
    let serr = |source| Error::Secret { op: "read", ns: o.ns.clone(), name: o.secret_name.clone(), source };
    let meta = if data_due(apikey, now) {
        let full = secrets.get_opt(&o.secret_name).await.map_err(serr)?;
        let meta = full.as_ref().map(|s| s.metadata.clone());
        o.fetched = full;
        meta
    } else {
        secrets.get_metadata_opt(&o.secret_name).await.map_err(serr)?.map(|m| m.metadata)
    };
    let Some(meta) = meta else {
        // NB: a deleted main Secret gets a fresh key; a previous-key Secret left beside it must go too.
        if o.wants_own() {
            read_previous(ctx, apikey, o, &secrets).await?;
        }
        return Ok(());
    };
    o.secret_version = meta.resource_version.clone();
    if !secret::controlled_by(meta.owner_references.as_ref(), apikey) {
        o.secret = SecretState::Foreign;
        return Ok(());
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let book = Book::from_annotations(&annotations);
    let shape = annotations.get(layout::SHAPE).map(String::as_str);
    let entries = Entries::from_shape(shape);
    o.reshape = o.layout.as_ref().is_some_and(|l| shape != Some(l.shape().as_str()));
    o.entries = entries.clone().unwrap_or_default();
    let found = verify(ctx, apikey, o, &secrets, now).await?;
    // NB: an unreadable shape cannot say where the keys are: an edit, replaced like one.
    let tampered = found.tampered || entries.is_none();
    // NB: during a grace period also in one Secret: a crash right after a template moved the previous key back
    // into the main Secret leaves its own Secret behind, deleted by this reconcile (at the latest at the grace end).
    let look = o.entries.own || o.wants_own() || book.has_previous();
    o.secret = SecretState::Managed { book, tampered, reseal: found.reseal };
    if look {
        read_previous(ctx, apikey, o, &secrets).await?;
    }
    Ok(())
}

/// Reads the previous key's own Secret: metadata, and its data once per version to check it against its seal.
async fn read_previous(ctx: &Context, apikey: &ApiKey, o: &mut Observed, secrets: &Api<Secret>) -> Result<(), Error> {
    let name = o.previous_name();
    let serr = |source| Error::Secret { op: "read", ns: o.ns.clone(), name: name.clone(), source };
    let Some(meta) = secrets.get_metadata_opt(&name).await.map_err(serr)?.map(|m| m.metadata) else {
        return Ok(());
    };
    if !secret::controlled_by(meta.owner_references.as_ref(), apikey) {
        o.previous = PreviousState::Foreign;
        return Ok(());
    }
    let book = Book::from_annotations(meta.annotations.as_ref().unwrap_or(&Default::default()));
    let version = meta.resource_version.clone();
    let sound = if ctx.verified(&o.ns, &name, version.as_deref().unwrap_or_default()) {
        true
    } else {
        let full = read_at_version(secrets, &o.ns, &name, version.as_deref()).await?;
        let sound = inspect_previous(&ctx.sealer, (&o.uid, &name), &full);
        if sound {
            ctx.mark_verified(&o.ns, &name, version.as_deref());
        }
        o.previous_fetched = Some(full);
        sound
    };
    o.previous = PreviousState::Ours { book, sound, version };
    Ok(())
}

/// Whether the previous key's own Secret is as Keyward wrote it: one entry (the current entry name of its shape)
/// holding the key its bookkeeping names as previous, under a seal that verifies. Pure.
pub fn inspect_previous(sealer: &Sealer, (uid, name): (&str, &str), full: &Secret) -> bool {
    let annotations = full.metadata.annotations.clone().unwrap_or_default();
    let book = Book::from_annotations(&annotations);
    let Some(entries) = Entries::from_shape(annotations.get(layout::SHAPE).map(String::as_str)) else { return false };
    let only_the_key = full.data.as_ref().is_some_and(|d| d.keys().all(|k| *k == entries.current));
    let key = key_at(full, &entries.current);
    let sealed = Sealed { uid, secret: name, book: &book, current: None, previous: key.as_ref() };
    let verdict = sealer.verify(&sealed, annotations.get(seal::SEAL).map(String::as_str));
    only_the_key
        && book.previous_key_id.is_some()
        && fingerprint_of(book.previous_key_id.as_deref(), key.as_ref())
        && matches!(verdict, Verdict::Valid | Verdict::ValidUnderPrevious)
}

/// What the whole Secret says about itself (see [`inspect`]); each version is checked once, then trusted.
async fn verify(
    ctx: &Context,
    apikey: &ApiKey,
    o: &mut Observed,
    secrets: &Api<Secret>,
    now: Timestamp,
) -> Result<Inspection, Error> {
    let version = o.secret_version.clone().unwrap_or_default();
    if ctx.verified(&o.ns, &o.secret_name, &version) {
        return Ok(Inspection { tampered: false, reseal: false });
    }
    let full = match o.fetched.take() {
        Some(full) => full,
        None => read_at_version(secrets, &o.ns, &o.secret_name, o.secret_version.as_deref()).await?,
    };
    let grace = o.rotation.as_ref().ok().map(RotationPlan::grace_period);
    let status = status_book(apikey);
    let found = inspect(&ctx.sealer, (&o.uid, &o.secret_name), &full, status.as_ref(), grace, now);
    if !found.tampered && !found.reseal {
        ctx.mark_verified(&o.ns, &o.secret_name, Some(&version));
    }
    o.fetched = Some(full);
    Ok(found)
}

/// What a whole Secret says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inspection {
    /// Edited behind Keyward's back: a key or fingerprint that does not match, a seal that does not verify, or
    /// bookkeeping that cannot be (a rotation in the future, a grace longer than the spec's).
    pub tampered: bool,
    /// Unchanged, but not sealed by the current seal key.
    pub reseal: bool,
}

/// How far in the future a rotation time may be (clock skew between replicas) before it is impossible.
const SKEW: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// Inspects a whole Secret of the ApiKey `(uid, secret name)`: fingerprints, plausibility, seal. Without a seal
/// (a Secret written before seals existed), it is trusted only if its bookkeeping is exactly what the ApiKey's
/// status (written by Keyward from that Secret) says. Pure.
pub fn inspect(
    sealer: &Sealer,
    (uid, secret_name): (&str, &str),
    full: &Secret,
    status: Option<&Book>,
    grace: Option<std::time::Duration>,
    now: Timestamp,
) -> Inspection {
    let annotations = full.metadata.annotations.clone().unwrap_or_default();
    let book = Book::from_annotations(&annotations);
    let entries = Entries::from_shape(annotations.get(layout::SHAPE).map(String::as_str)).unwrap_or_default();
    let current = key_at(full, &entries.current);
    let previous = if entries.own { None } else { key_at(full, &entries.previous) };
    // NB: with the previous key in its own Secret, that Secret's own check covers it.
    let consistent = fingerprint_of(book.key_id.as_deref(), current.as_ref())
        && (entries.own || fingerprint_of(book.previous_key_id.as_deref(), previous.as_ref()))
        && plausible(&book, grace, status, now);
    let sealed =
        Sealed { uid, secret: secret_name, book: &book, current: current.as_ref(), previous: previous.as_ref() };
    let (trusted, reseal) = match sealer.verify(&sealed, annotations.get(seal::SEAL).map(String::as_str)) {
        Verdict::Valid => (true, false),
        Verdict::ValidUnderPrevious => (true, true),
        Verdict::Missing => (status == Some(&book), true),
        Verdict::Invalid => (false, false),
    };
    let tampered = !(consistent && trusted && holds_only_its_entries(full));
    Inspection { tampered, reseal: reseal && !tampered }
}

/// Whether a Secret's data holds only the entries its shape names, the fingerprint entry holding the fingerprint:
/// any other entry is one a gateway that reads every entry would take for a credential.
pub fn holds_only_its_entries(full: &Secret) -> bool {
    let annotations = full.metadata.annotations.clone().unwrap_or_default();
    let Some(entries) = Entries::from_shape(annotations.get(layout::SHAPE).map(String::as_str)) else { return false };
    let allowed = entries.allowed();
    let key_id = Book::from_annotations(&annotations).key_id;
    full.data.iter().flatten().all(|(k, v)| {
        allowed.contains(&k.as_str())
            && (entries.key_id.as_deref() != Some(k.as_str()) || key_id.as_deref().map(str::as_bytes) == Some(&v.0))
    })
}

/// Whether a fingerprint and a key go together: both absent, or the key's fingerprint.
fn fingerprint_of(id: Option<&str>, key: Option<&KeyMaterial>) -> bool {
    match (id, key) {
        (None, None) => true,
        (Some(id), Some(k)) => keys::key_id(k) == id,
        _ => false,
    }
}

/// Whether the bookkeeping could have been written by Keyward: no rotation in the future, no grace beyond the
/// spec's (when the spec can say).
///
/// NB: a grace period longer than the spec's is Keyward's own doing when the status (which only Keyward writes)
/// reports the same rotation and end: the spec's grace period was shortened since. That is a spec change, not an
/// edit; the shorter grace period then ends the previous key earlier (see `overlap::previous_end`).
fn plausible(b: &Book, grace: Option<std::time::Duration>, status: Option<&Book>, now: Timestamp) -> bool {
    let future = b.rotated_at.is_some_and(|t| now.checked_add(SKEW).is_ok_and(|limit| t > limit));
    let recorded = status.is_some_and(|s| {
        s.rotated_at == b.rotated_at && s.previous_expires_at == b.previous_expires_at && s.previous_key_id.is_some()
    });
    let too_long =
        match (b.previous_expires_at, b.rotated_at, grace.and_then(|g| jiff::SignedDuration::try_from(g).ok())) {
            (Some(end), Some(at), Some(g)) => at.checked_add(g).is_ok_and(|limit| end > limit) && !recorded,
            (Some(_), None, _) => true,
            _ => false,
        };
    !future && !too_long
}

/// The bookkeeping the ApiKey's status reports (Keyward writes it from the Secret).
fn status_book(apikey: &ApiKey) -> Option<Book> {
    let s = apikey.status.as_ref()?;
    Some(Book {
        key_id: s.key_id.clone(),
        rotated_at: s.last_rotation_time.as_ref().map(|t| t.0),
        previous_key_id: s.previous_key_id.clone(),
        previous_expires_at: s.previous_key_expires_at.as_ref().map(|t| t.0),
        rotation_count: s.rotation_count.unwrap_or(0),
        rotate_request: s.last_rotate_request.clone(),
    })
}

/// Whether a requested rotation is still the ApiKey's request, on a fresh read.
///
/// NB: a requested rotation is decided on the CACHED ApiKey's request and the Secret as just read. When the cache
/// is behind (another instance has already answered a newer request, so the Secret records it), the old request
/// looks unanswered and the key would rotate again. The fresh read comes after the Secret read, so it holds every
/// request the Secret has answered. Requests are rare; one read each.
pub(crate) async fn request_is_current(ctx: &Context, o: &Observed) -> Result<bool, Error> {
    let api: Api<ApiKey> = Api::namespaced(ctx.runtime.client.clone(), &o.ns);
    let fresh = api.get_metadata(&o.name).await.map_err(|source| Error::ApiKey {
        op: "read",
        ns: o.ns.clone(),
        name: o.name.clone(),
        source,
    })?;
    let fresh_request = fresh.metadata.annotations.as_ref().and_then(|a| a.get(ROTATE_ANNOTATION));
    Ok(fresh.metadata.uid.as_deref() == Some(o.uid.as_str()) && fresh_request == o.rotate_request.as_ref())
}

/// The key material a write keeps (`keeps`: see [`super::plan::Action::keeps_material`]): the current and the
/// previous key, read from the whole Secret at the decided version.
pub(crate) async fn kept_material(
    ctx: &Context,
    o: &mut Observed,
    keeps: bool,
) -> Result<(Option<KeyMaterial>, Option<KeyMaterial>), Error> {
    if !keeps {
        return Ok((None, None));
    }
    let full = match o.fetched.take() {
        Some(full) => full,
        None => {
            let secrets: Api<Secret> = Api::namespaced(ctx.runtime.client.clone(), &o.ns);
            read_at_version(&secrets, &o.ns, &o.secret_name, o.secret_version.as_deref()).await?
        }
    };
    let current = key_at(&full, &o.entries.current);
    let previous = if o.entries.own { kept_own_previous(ctx, o).await? } else { key_at(&full, &o.entries.previous) };
    o.fetched = Some(full);
    Ok((current, previous))
}

/// The previous key from its own Secret, if that Secret is sound and in step with the main Secret's bookkeeping.
async fn kept_own_previous(ctx: &Context, o: &mut Observed) -> Result<Option<KeyMaterial>, Error> {
    let PreviousState::Ours { version, sound: true, book: own } = &o.previous else { return Ok(None) };
    if o.book().is_none_or(|b| b.previous_key_id != own.previous_key_id) {
        return Ok(None);
    }
    let full = match o.previous_fetched.take() {
        Some(full) => full,
        None => {
            let secrets: Api<Secret> = Api::namespaced(ctx.runtime.client.clone(), &o.ns);
            read_at_version(&secrets, &o.ns, &o.previous_name(), version.as_deref()).await?
        }
    };
    let shape = full.metadata.annotations.as_ref().and_then(|a| a.get(layout::SHAPE));
    let key = Entries::from_shape(shape.map(String::as_str)).and_then(|e| key_at(&full, &e.current));
    o.previous_fetched = Some(full);
    Ok(key)
}

/// Whether `apikey` is being deleted (garbage collection removes its Secret with it).
pub fn deleting(apikey: &ApiKey) -> bool {
    apikey.meta().deletion_timestamp.is_some()
}

/// Whether the status says a write that needs the Secret's data is due now: a rotation (scheduled or requested and
/// not yet answered) or the end of a grace period. Only a hint for which read to make: the decision is taken on
/// what the read returns.
pub(super) fn data_due(apikey: &ApiKey, now: Timestamp) -> bool {
    let Some(status) = apikey.status.as_ref() else { return false };
    let past = |t: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| t.is_some_and(|t| t.0 <= now);
    let requested = apikey
        .annotations()
        .get(ROTATE_ANNOTATION)
        .is_some_and(|r| status.key_id.is_some() && status.last_rotate_request.as_ref() != Some(r));
    past(status.next_rotation_time.as_ref()) || past(status.previous_key_expires_at.as_ref()) || requested
}

/// The whole Secret (with data), provided it is still at `version`; otherwise it changed since it was looked at
/// (e.g. another instance rotated) and the reconcile must decide again.
async fn read_at_version(secrets: &Api<Secret>, ns: &str, name: &str, version: Option<&str>) -> Result<Secret, Error> {
    let full = secrets.get(name).await.map_err(|source| Error::Secret {
        op: "read",
        ns: ns.to_string(),
        name: name.to_string(),
        source,
    })?;
    if full.metadata.resource_version.as_deref() != version {
        return Err(Error::Stale { ns: ns.to_string(), name: name.to_string() });
    }
    Ok(full)
}

/// The key in a Secret's data entry, if it is readable.
fn key_at(s: &Secret, entry: &str) -> Option<KeyMaterial> {
    let bytes = s.data.as_ref()?.get(entry)?;
    KeyMaterial::from_secret_bytes(bytes.0.clone()).ok()
}
