//! Watch caches with a readiness signal that any number of tasks can wait on, and that skip (with a warning)
//! objects that do not deserialize into Keyward's types.
//!
//! NB: kube-runtime's `Store::wait_until_ready` keeps a single waker: when two tasks wait on the same store (say a
//! controller and a readiness probe), one of them may never wake. So readiness here comes from the watch stream
//! itself (its first `InitDone`), published on a `tokio::sync::watch` channel, and `wait_until_ready` is called by
//! at most one task per store: the controller that owns it.
//!
//! NB: a typed list fails as a whole when ONE item does not deserialize (an object stored before a schema
//! tightening, or with a value of the wrong type written around the schema): the watcher would retry the list
//! forever and no object of that kind would ever be reconciled. So objects are read as [`Tolerant`]: an unreadable
//! one is logged and left out of the cache (a readable version cached before is dropped), the others go on.
//!
//! Cached objects are slimmed before they are stored: `managedFields` and kubectl's
//! `last-applied-configuration` annotation are dropped. Keyward reads neither, and together they were most of the
//! memory of a cached ApiKey (the managed fields of a status with conditions are a deep JSON tree).

use std::borrow::Cow;

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Whether a cache has its first full list. Cheap to clone; waiting is safe from any number of tasks.
#[derive(Clone, Debug)]
pub struct Ready(tokio::sync::watch::Receiver<bool>);

impl Ready {
    /// Whether the first full list is in.
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Waits for the first full list; returns `false` if the stream ended before it.
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        rx.wait_for(|r| *r).await.is_ok()
    }
}

/// An object as the API server sent it: typed, or, when it does not fit the type, its metadata and why not.
#[derive(Clone, Debug)]
pub enum Tolerant<K> {
    Typed(K),
    Unreadable { metadata: Box<ObjectMeta>, error: String },
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Tolerant<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        match K::deserialize(&value) {
            Ok(k) => Ok(Tolerant::Typed(k)),
            Err(e) => {
                // Without readable metadata the object cannot even be named: that stays an error.
                let metadata = ObjectMeta::deserialize(value.get("metadata").unwrap_or(&serde_json::Value::Null))
                    .map_err(serde::de::Error::custom)?;
                Ok(Tolerant::Unreadable { metadata: Box::new(metadata), error: e.to_string() })
            }
        }
    }
}

impl<K: Resource> Resource for Tolerant<K> {
    type DynamicType = K::DynamicType;
    // NB: dynamic, so that one `Api` constructor serves namespaced and cluster-wide watches alike.
    type Scope = kube::core::DynamicResourceScope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Tolerant::Typed(k) => k.meta(),
            Tolerant::Unreadable { metadata, .. } => metadata,
        }
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Tolerant::Typed(k) => k.meta_mut(),
            Tolerant::Unreadable { metadata, .. } => metadata,
        }
    }
}

/// An `Api` over one namespace, or over all of them for `None`: the scope of one set of controllers.
pub fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch of `api` reflected into a store. The returned stream must be polled (by a controller or a task) for
/// the store to fill; its items are the watcher's events, without the objects that do not deserialize.
pub fn reflected<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (Store<K>, Ready, impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static)
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    let (reader, writer) = reflector::store();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let dt = K::DynamicType::default();
    let namespace = api.namespace().map(str::to_string);
    let client: kube::Client = api.into();
    let tolerant: Api<Tolerant<K>> = match &namespace {
        Some(ns) => Api::namespaced_with(client, ns, &dt),
        None => Api::all_with(client, &dt),
    };
    let cached = reader.clone();
    let events = watcher(tolerant, config)
        .default_backoff()
        .filter_map(move |event| futures::future::ready(event.map(|e| typed(e, &cached)).transpose()))
        .modify(slim)
        .reflect(writer)
        .inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                tx.send_replace(true);
            }
        });
    (reader, Ready(rx), events)
}

/// kubectl's client-side apply annotation: a copy of the whole object as last applied.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what Keyward never reads and what costs the most memory in a cache: managed fields and kubectl's copy
/// of the last applied object.
pub fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

/// The typed event, or none for an unreadable object (logged; a cached readable version of it is deleted).
fn typed<K>(event: watcher::Event<Tolerant<K>>, cached: &Store<K>) -> Option<watcher::Event<K>>
where
    K: Resource + Clone,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    use watcher::Event;
    // A Delete of the readable version cached for this object, if any.
    let forget = |metadata: &ObjectMeta| {
        let at = ObjectRef::<K>::new(metadata.name.as_deref().unwrap_or_default());
        let at = match &metadata.namespace {
            Some(ns) => at.within(ns),
            None => at,
        };
        cached.get(&at).map(|old| Event::Delete((*old).clone()))
    };
    let unreadable = |metadata: &ObjectMeta, error: &str| {
        tracing::warn!(
            kind = %K::kind(&K::DynamicType::default()),
            namespace = metadata.namespace.as_deref(),
            name = metadata.name.as_deref(),
            error,
            "skipping an object that does not deserialize (stored before a schema change, or written around the \
             schema): it is not reconciled until it is fixed or deleted"
        );
        forget(metadata)
    };
    match event {
        Event::Init => Some(Event::Init),
        Event::InitDone => Some(Event::InitDone),
        Event::InitApply(Tolerant::Typed(k)) => Some(Event::InitApply(k)),
        Event::Apply(Tolerant::Typed(k)) => Some(Event::Apply(k)),
        Event::Delete(Tolerant::Typed(k)) => Some(Event::Delete(k)),
        // During a (re)list, leaving it out of the new list removes it from the cache.
        Event::InitApply(Tolerant::Unreadable { metadata, error }) => {
            unreadable(metadata.as_ref(), &error);
            None
        }
        Event::Apply(Tolerant::Unreadable { metadata, error }) => unreadable(metadata.as_ref(), &error),
        Event::Delete(Tolerant::Unreadable { metadata, .. }) => forget(metadata.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ApiKey;

    #[test]
    fn slim_drops_managed_fields_and_last_applied_but_keeps_other_annotations() {
        let mut k: ApiKey = serde_json::from_value(serde_json::json!({
            "apiVersion": "keyward.dev/v1alpha1",
            "kind": "ApiKey",
            "metadata": {
                "name": "a",
                "namespace": "n",
                "annotations": {"keyward.dev/rotate": "r1", LAST_APPLIED: "{\"spec\":{}}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply", "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:spec": {}}}]
            },
            "spec": {}
        }))
        .expect("ApiKey");
        slim(&mut k);
        assert!(k.metadata.managed_fields.is_none());
        let a = k.metadata.annotations.expect("annotations");
        assert_eq!(a.get("keyward.dev/rotate").map(String::as_str), Some("r1"));
        assert!(!a.contains_key(LAST_APPLIED));
    }
}
