//! Watch caches with a readiness signal that any number of tasks can wait on.
//!
//! NB: kube-runtime's `Store::wait_until_ready` keeps a single waker: when two tasks wait on the same store (say a
//! controller and a readiness probe), one of them may never wake. So readiness here comes from the watch stream
//! itself (its first `InitDone`), published on a `tokio::sync::watch` channel, and `wait_until_ready` is called by
//! at most one task per store: the controller that owns it.

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

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

/// A watch of `api` reflected into a store. The returned stream must be polled (by a controller or a task) for
/// the store to fill; its items are the watcher's events.
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
    let events = watcher(api, config).default_backoff().reflect(writer).inspect(move |event| {
        if matches!(event, Ok(watcher::Event::InitDone)) {
            tx.send_replace(true);
        }
    });
    (reader, Ready(rx), events)
}
