//! The low lane: the writes that follow a Secret write and serve no consumer of the key — the ApiKey's status and
//! the events. A herd of due rotations writes every Secret first: these wait for a quiet moment in the Secret writes
//! (none in flight and none ended in the last [`QUIET`]), or at most [`MAX_DEFER`], so they never take the API
//! server's capacity from a due Secret write, and a reconcile hands them over and frees its slot for the next key.
//!
//! Statuses are kept per key, the latest only, and one key's status is never written twice at once, so an older
//! status cannot land after a newer one. A failed status write asks for a reconcile of its key after a pause; that
//! reconcile decides the status again from the Secret (the source of truth). On shutdown what is queued is written
//! at once, bounded by the drain.
//!
//! Without a lane (a [`super::Context`] not started by [`super::run`], as in the scripted tests) every write is
//! made inline, in the reconcile.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::Context;
use crate::api::{ApiKey, ApiKeyStatus};
use crate::runtime::events::Event;

/// How long after the last Secret write ended the lane waits before writing.
pub const QUIET: Duration = Duration::from_millis(100);
/// The longest a status or an event waits for a quiet moment (so a long cold start still shows progress).
pub const MAX_DEFER: Duration = Duration::from_secs(5);
/// A failed status write asks for a reconcile of its key after this long.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The Secret writes in flight, and when the last one ended.
#[derive(Default)]
pub struct SecretWrites {
    in_flight: AtomicUsize,
    last_end: Mutex<Option<Instant>>,
}

/// Held for the duration of one Secret write.
pub struct WriteGuard<'a>(&'a SecretWrites);

impl SecretWrites {
    /// Counts a Secret write until the guard drops.
    pub fn start(&self) -> WriteGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        WriteGuard(self)
    }

    /// Whether a Secret write is in flight or ended less than [`QUIET`] before `now`.
    pub fn busy(&self, now: Instant) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
            || self.last_end.lock().ok().and_then(|l| *l).is_some_and(|t| now.duration_since(t) < QUIET)
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.last_end.lock() {
            *l = Some(Instant::now());
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the lane writes.
pub enum Job {
    /// The status this controller owns for the key.
    Status { key: ObjectRef<ApiKey>, status: Box<ApiKeyStatus> },
    /// An event about an object.
    Event { regarding: Box<ObjectReference>, event: Box<Event> },
    /// Write everything queued now, then answer and stop.
    Flush(oneshot::Sender<()>),
}

/// The handle reconciles hand their status and events to.
pub struct Lane {
    tx: mpsc::UnboundedSender<Job>,
    /// The Secret writes the lane yields to.
    pub secret_writes: Arc<SecretWrites>,
}

impl Lane {
    /// Queues a job; gives it back if the lane has stopped (then the caller writes inline).
    pub fn send(&self, job: Job) -> Result<(), Job> {
        self.tx.send(job).map_err(|e| e.0)
    }
}

/// One queued entry, in arrival order; a status entry's body is in `Queue::statuses`.
enum Entry {
    Status(ObjectRef<ApiKey>),
    Event(Box<ObjectReference>, Box<Event>),
}

/// What waits to be written.
#[derive(Default)]
struct Queue {
    order: VecDeque<(Instant, Entry)>,
    statuses: HashMap<ObjectRef<ApiKey>, Box<ApiKeyStatus>>,
}

impl Queue {
    fn push(&mut self, job: Job, now: Instant) {
        match job {
            Job::Status { key, status } => {
                if self.statuses.insert(key.clone(), status).is_none() {
                    self.order.push_back((now, Entry::Status(key)));
                }
            }
            Job::Event { regarding, event } => self.order.push_back((now, Entry::Event(regarding, event))),
            Job::Flush(_) => {}
        }
    }

    /// The first entry that may be written now: any when `go` (no Secret write is busy, or flushing), else only one
    /// that waited [`MAX_DEFER`]; a status whose key is being written waits for that write.
    ///
    /// NB: entries are in arrival order, so the scan stops at the first one too young to go: a long queue behind a
    /// busy moment costs nothing per look (no O(queue) scan per arriving job).
    fn take(&mut self, now: Instant, go: bool, writing: &HashSet<ObjectRef<ApiKey>>) -> Option<Entry> {
        let mut found = None;
        for (i, (at, e)) in self.order.iter().enumerate() {
            if !go && now.duration_since(*at) < MAX_DEFER {
                break;
            }
            if !matches!(e, Entry::Status(k) if writing.contains(k)) {
                found = Some(i);
                break;
            }
        }
        self.order.remove(found?).map(|(_, e)| e)
    }

    fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Starts the lane for `ctx`: `concurrency` writes at once. Failed status writes send their key on `retry`.
pub fn start(
    ctx: &Arc<Context>,
    concurrency: usize,
    retry: futures::channel::mpsc::UnboundedSender<ObjectRef<ApiKey>>,
) -> (Lane, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let secret_writes = Arc::new(SecretWrites::default());
    let task = tokio::spawn(work(ctx.clone(), rx, retry, secret_writes.clone(), concurrency.max(1)));
    (Lane { tx, secret_writes }, task)
}

async fn work(
    ctx: Arc<Context>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    retry: futures::channel::mpsc::UnboundedSender<ObjectRef<ApiKey>>,
    writes: Arc<SecretWrites>,
    concurrency: usize,
) {
    let mut queue = Queue::default();
    let mut running: JoinSet<Option<ObjectRef<ApiKey>>> = JoinSet::new();
    let mut writing: HashSet<ObjectRef<ApiKey>> = HashSet::new();
    let mut flush: Option<oneshot::Sender<()>> = None;
    loop {
        let now = Instant::now();
        let go = flush.is_some() || !writes.busy(now);
        while running.len() < concurrency {
            let Some(entry) = queue.take(now, go, &writing) else { break };
            running.spawn(write(ctx.clone(), entry, &mut queue, &mut writing, retry.clone()));
        }
        if flush.is_some() && queue.is_empty() && running.is_empty() {
            if let Some(done) = flush.take() {
                let _ = done.send(());
            }
            return;
        }
        tokio::select! {
            job = rx.recv(), if flush.is_none() => match job {
                Some(Job::Flush(done)) => flush = Some(done),
                Some(job) => queue.push(job, Instant::now()),
                None => return,
            },
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok(Some(key)) = done {
                    writing.remove(&key);
                }
            }
            () = tokio::time::sleep(QUIET / 4), if !queue.is_empty() => {}
        }
    }
}

/// The write of one entry, as a future that owns what it needs; returns the key whose status it wrote.
fn write(
    ctx: Arc<Context>,
    entry: Entry,
    queue: &mut Queue,
    writing: &mut HashSet<ObjectRef<ApiKey>>,
    retry: futures::channel::mpsc::UnboundedSender<ObjectRef<ApiKey>>,
) -> impl std::future::Future<Output = Option<ObjectRef<ApiKey>>> + Send + 'static {
    let status = match &entry {
        Entry::Status(key) => {
            writing.insert(key.clone());
            queue.statuses.remove(key)
        }
        Entry::Event(..) => None,
    };
    async move {
        match (entry, status) {
            (Entry::Status(key), Some(status)) => {
                let ns = key.namespace.clone().unwrap_or_default();
                match ctx.runtime.apply_status(&ns, &key.name, &status).await {
                    Ok(()) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => {
                        tracing::warn!(namespace = %ns, name = %key.name, error = %e, "status write failed; reconciling the key again");
                        tokio::time::sleep(RETRY_AFTER).await;
                        let _ = retry.unbounded_send(key.clone());
                    }
                }
                Some(key)
            }
            (Entry::Event(regarding, event), _) => {
                ctx.runtime.publish_to(&regarding, *event).await;
                None
            }
            (Entry::Status(key), None) => Some(key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_job(name: &str, count: i64) -> Job {
        let status = ApiKeyStatus { rotation_count: Some(count), ..ApiKeyStatus::default() };
        Job::Status { key: ObjectRef::new(name).within("ns"), status: Box::new(status) }
    }

    #[test]
    fn a_newer_status_replaces_a_queued_one_in_its_place() {
        let (mut q, t) = (Queue::default(), Instant::now());
        q.push(status_job("a", 1), t);
        q.push(status_job("b", 1), t);
        q.push(status_job("a", 2), t);
        let none = HashSet::new();
        let Some(Entry::Status(first)) = q.take(t, true, &none) else { panic!("a status first") };
        assert_eq!(first.name, "a");
        assert_eq!(q.statuses.get(&first).and_then(|s| s.rotation_count), Some(2));
        assert_eq!(q.order.len(), 1, "one entry per key");
    }

    #[test]
    fn nothing_is_written_while_secret_writes_are_busy_until_it_waited_max_defer() {
        let (mut q, t) = (Queue::default(), Instant::now());
        q.push(status_job("a", 1), t);
        let none = HashSet::new();
        assert!(q.take(t + MAX_DEFER / 2, false, &none).is_none());
        assert!(q.take(t + MAX_DEFER, false, &none).is_some());
    }

    #[test]
    fn a_status_waits_while_the_same_key_is_being_written() {
        let (mut q, t) = (Queue::default(), Instant::now());
        q.push(status_job("a", 1), t);
        q.push(status_job("b", 1), t);
        let writing: HashSet<_> = [ObjectRef::new("a").within("ns")].into();
        let Some(Entry::Status(k)) = q.take(t, true, &writing) else { panic!("b may go") };
        assert_eq!(k.name, "b");
        assert!(q.take(t, true, &writing).is_none());
    }

    #[test]
    fn busy_while_a_write_is_in_flight_and_for_quiet_after() {
        let w = SecretWrites::default();
        assert!(!w.busy(Instant::now()));
        let g = w.start();
        assert!(w.busy(Instant::now()));
        drop(g);
        assert!(w.busy(Instant::now()));
        assert!(!w.busy(Instant::now() + QUIET));
    }
}
