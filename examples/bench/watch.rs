//! Watches that time the operator from outside: ApiKeys turning Ready (per phase), and herd Secrets rotating.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use keyward::api::ApiKey;
use keyward::apikey::book;

use crate::PHASE;

#[derive(Clone, Default)]
pub(crate) struct Counts {
    /// Keys with Ready=True.
    pub(crate) ready: usize,
    /// Keys whose status says they rotated at least once.
    pub(crate) rotated: usize,
    /// When the last key turned Ready.
    last_ready: Option<Instant>,
    /// Ready=False reasons, for the progress line.
    not_ready: BTreeMap<String, usize>,
}

/// Watches the ApiKeys of one phase.
pub(crate) struct Tracker {
    rx: watch::Receiver<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Tracker {
    /// Starts the watch and waits for its first list, so no transition is missed.
    pub(crate) async fn start(api: Api<ApiKey>, phase: &str) -> anyhow::Result<Tracker> {
        let (tx, rx) = watch::channel(Counts::default());
        let mut keys: HashMap<String, (bool, bool, Option<String>)> = HashMap::new();
        let task = watch_phase(api, phase, "ApiKey", move |obj: ApiKey, _| {
            let st = obj.status.clone().unwrap_or_default();
            let cond = st.conditions.iter().find(|c| c.type_ == "Ready");
            let ready = cond.is_some_and(|c| c.status == "True");
            let reason = cond.filter(|c| c.status != "True").map(|c| c.reason.clone());
            let rotated = st.rotation_count.unwrap_or(0) > 0;
            let now = (ready, rotated, reason);
            let before = keys.insert(obj.name_any(), now.clone());
            if before.as_ref() == Some(&now) {
                return;
            }
            tx.send_modify(|c| {
                if let Some((r, rot, reason)) = &before {
                    c.ready -= usize::from(*r);
                    c.rotated -= usize::from(*rot);
                    if let Some(reason) = reason {
                        *c.not_ready.entry(reason.clone()).or_default() -= 1;
                    }
                }
                c.ready += usize::from(now.0);
                c.rotated += usize::from(now.1);
                if let Some(reason) = &now.2 {
                    *c.not_ready.entry(reason.clone()).or_default() += 1;
                }
                c.not_ready.retain(|_, v| *v > 0);
                if now.0 && !before.as_ref().is_some_and(|b| b.0) {
                    c.last_ready = Some(Instant::now());
                }
            });
        })
        .await?;
        Ok(Tracker { rx, task })
    }

    pub(crate) fn state(&self) -> Counts {
        self.rx.borrow().clone()
    }

    /// Waits until `n` keys are Ready; returns when the last one turned Ready.
    pub(crate) async fn wait_ready(
        &mut self,
        n: usize,
        t0: Instant,
        timeout: Duration,
        what: &str,
    ) -> anyhow::Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut report = tokio::time::interval(Duration::from_secs(5));
        report.tick().await;
        loop {
            {
                let c = self.rx.borrow_and_update();
                if c.ready >= n {
                    return c.last_ready.context("no key turned Ready");
                }
            }
            tokio::select! {
                changed = self.rx.changed() => changed.context("the ApiKey watch stopped")?,
                _ = report.tick() => {
                    let c = self.state();
                    say!("{what}: {}/{n} Ready after {:.1}s; not ready: {:?}", c.ready, t0.elapsed().as_secs_f64(), c.not_ready);
                }
                () = tokio::time::sleep_until(deadline) => bail!("{what}: only {}/{n} Ready after {timeout:?}", self.state().ready),
            }
        }
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per herd Secret: when this program first saw it rotated, and its `rotated-at` annotation.
pub(crate) type Seen = HashMap<String, (Timestamp, Option<Timestamp>)>;

/// When this program first saw each herd Secret with a rotated key, and its `rotated-at` annotation.
pub(crate) struct Rotations {
    seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Rotations {
    pub(crate) async fn start(api: Api<PartialObjectMeta<Secret>>) -> anyhow::Result<Rotations> {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let task = watch_phase(api, "herd", "Secret", {
            let seen = seen.clone();
            move |obj: PartialObjectMeta<Secret>, at| {
                let a = obj.annotations();
                let count = a.get(book::ROTATION_COUNT).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
                if count < 1 {
                    return;
                }
                let stamped = a.get(book::ROTATED_AT).and_then(|v| v.parse::<Timestamp>().ok());
                let mut seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                seen.entry(obj.name_any()).or_insert((at, stamped));
            }
        })
        .await?;
        Ok(Rotations { seen, task })
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub(crate) fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Rotations {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Watches the objects labelled with `phase`, calling `on_apply` with each one listed or changed and the moment its
/// event arrived. Returns the watch's task once the first list is done, so no transition is missed. Watch errors are
/// logged and retried.
pub(crate) async fn watch_phase<K>(
    api: Api<K>,
    phase: &str,
    what: &'static str,
    mut on_apply: impl FnMut(K, Timestamp) + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let (synced_tx, synced_rx) = tokio::sync::oneshot::channel();
    let cfg = watcher::Config::default().labels(&format!("{PHASE}={phase}"));
    let task = tokio::spawn(async move {
        let mut synced_tx = Some(synced_tx);
        let mut events = std::pin::pin!(watcher(api, cfg));
        while let Some(ev) = events.next().await {
            let at = Timestamp::now();
            match ev {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => on_apply(o, at),
                Ok(watcher::Event::InitDone) => {
                    if let Some(s) = synced_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    say!("{what} watch error (retrying): {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(60), synced_rx)
        .await
        .with_context(|| format!("the {what} watch did not list in 60s"))?
        .with_context(|| format!("the {what} watch stopped"))?;
    Ok(task)
}
