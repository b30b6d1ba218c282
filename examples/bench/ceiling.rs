//! The ceiling phase: the API server's write ceiling for what Keyward writes per new key, with no operator.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use keyward::api::{ApiKey, ApiKeySpec};
use keyward::apikey::book::Book;
use keyward::apikey::layout::Layout;
use keyward::apikey::seal::{Sealed, Sealer};
use keyward::apikey::{plan, secret, status};
use keyward::keys::{self, OsRandom};

use crate::writes::retry;
use crate::{CEILING_NS, MANAGER};

/// The write ceiling: returns (objects/s, timed seconds, untimed setup seconds).
pub(crate) async fn ceiling(
    client: &kube::Client,
    sealer: Arc<Sealer>,
    n: usize,
    conc: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let apikeys: Api<ApiKey> = Api::namespaced(client.clone(), CEILING_NS);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), CEILING_NS);
    let t = Instant::now();
    say!("ceiling: creating {n} ApiKeys in {CEILING_NS} (untimed; no operator watches it)");
    let created: Vec<ApiKey> = stream::iter(0..n)
        .map(|i| {
            let apikeys = apikeys.clone();
            async move {
                let ak = ApiKey::new(&format!("ceil-{i:05}"), ApiKeySpec::default());
                let pp = PostParams::default();
                retry("create ApiKey", || apikeys.create(&pp, &ak)).await
            }
        })
        .buffer_unordered(conc)
        .try_collect()
        .await?;
    let setup = t.elapsed().as_secs_f64();
    say!("ceiling: {n} ApiKeys created in {setup:.1}s; timing {n} × (Secret create + status apply), {conc} in flight");
    let t0 = Instant::now();
    let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let progress = tokio::spawn({
        let done = done.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                say!("ceiling: {}/{n}", done.load(std::sync::atomic::Ordering::Relaxed));
            }
        }
    });
    let result: anyhow::Result<()> = stream::iter(created)
        .map(|ak| {
            let (apikeys, secrets, pp, done) = (apikeys.clone(), secrets.clone(), pp.clone(), done.clone());
            let sealer = sealer.clone();
            async move {
                let name = ak.name_any();
                // What Keyward computes for a new key, with no reads and no decisions.
                let key = keys::generate(&Default::default(), &mut OsRandom)?;
                let id = keys::key_id(&key);
                let now = Timestamp::from_second(Timestamp::now().as_second())?;
                let bk = Book { key_id: Some(id.clone()), rotated_at: Some(now), ..Book::default() };
                let material = secret::Material { current: Some(&key), previous: None };
                // The seal costs what Keyward's costs (one HMAC), under the operator's seal key.
                let uid = ak.uid().unwrap_or_default();
                let sealed = Sealed { uid: &uid, secret: &name, book: &bk, current: Some(&key), previous: None };
                let seal = sealer.seal(&sealed);
                let layout = Layout::resolve(&ak.spec, &name, &name).map_err(anyhow::Error::msg)?;
                let data = secret::main_data(&layout.entries, &bk, &material);
                let s = secret::build(&ak, (&layout, &name), (&bk, &seal), data, None);
                retry("create Secret", || secrets.create(&pp, &s)).await?;
                let st = status::desired(&ak, Some(&bk), (&plan::issued_condition(Some(&id)), None), None, now);
                let body = json!({"apiVersion": "keyward.dev/v1alpha1", "kind": "ApiKey", "status": st});
                let apply = PatchParams::apply(MANAGER).force();
                let patch = Patch::Apply(&body);
                retry("apply ApiKey status", || apikeys.patch_status(&name, &apply, &patch)).await?;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(conc)
        .try_collect()
        .await;
    let secs = t0.elapsed().as_secs_f64();
    progress.abort();
    result?;
    Ok((n as f64 / secs, secs, setup))
}

/// The floor for a herd: `n` of the ceiling's Secrets updated with a new key each by a plain client, `conc` in
/// flight, nothing else written: how soon the herd's last Secret could be live. Returns (seconds, updates/s).
pub(crate) async fn secret_floor(client: &kube::Client, n: usize, conc: usize) -> anyhow::Result<(f64, f64)> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), CEILING_NS);
    // Untimed: the objects to update, with their versions (one list).
    let mut list = secrets.list(&kube::api::ListParams::default()).await?.items;
    list.truncate(n);
    anyhow::ensure!(list.len() == n, "the ceiling left {} Secrets, the herd floor needs {n}", list.len());
    let pp = PostParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    let t0 = Instant::now();
    stream::iter(list)
        .map(|mut s| {
            let (secrets, pp) = (secrets.clone(), pp.clone());
            async move {
                let key = keys::generate(&Default::default(), &mut OsRandom)?;
                for v in s.data.iter_mut().flat_map(|d| d.values_mut()) {
                    v.0 = key.as_bytes().to_vec();
                }
                let name = s.name_any();
                retry("update Secret", || secrets.replace(&name, &pp, &s)).await.map(|_| ())
            }
        })
        .buffer_unordered(conc)
        .try_collect::<()>()
        .await?;
    let secs = t0.elapsed().as_secs_f64();
    Ok((secs, n as f64 / secs))
}
