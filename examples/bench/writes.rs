//! The API writes this program makes itself: ApiKeys by server-side apply, namespaces, and retries.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use keyward::api::ApiKey;

use crate::{MANAGER, PHASE};

/// Server-side applies one ApiKey per name, `conc` at a time, labelled with `phase`.
pub(crate) async fn apply_keys(
    api: &Api<ApiKey>,
    names: impl Iterator<Item = String>,
    phase: &str,
    spec: Value,
    conc: usize,
) -> anyhow::Result<()> {
    let body = |name: &str| {
        json!({
            "apiVersion": "keyward.dev/v1alpha1", "kind": "ApiKey",
            "metadata": {"name": name, "labels": {PHASE: phase}},
            "spec": spec,
        })
    };
    apply_each(api, names, body, conc).await
}

/// Server-side applies `body(name)` for each name, `conc` at a time, with this program's field manager.
pub(crate) async fn apply_each<K>(
    api: &Api<K>,
    names: impl Iterator<Item = String>,
    body: impl Fn(&str) -> Value,
    conc: usize,
) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = PatchParams::apply(MANAGER).force();
    stream::iter(names)
        .map(|name| {
            let body = body(&name);
            let (api, pp) = (api.clone(), pp.clone());
            async move {
                let patch = Patch::Apply(&body);
                retry("server-side apply", || api.patch(&name, &pp, &patch)).await.map(|_| ())
            }
        })
        .buffer_unordered(conc)
        .try_collect()
        .await
}

/// Retries server errors, 429 and transport errors with backoff (5 attempts).
pub(crate) async fn retry<T, F, Fut>(what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let retryable = match &e {
                    kube::Error::Api(s) => s.code == 429 || s.code >= 500,
                    _ => true,
                };
                if !retryable || attempt >= 5 {
                    return Err(anyhow::Error::new(e).context(what.to_owned()));
                }
            }
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
        attempt += 1;
    }
}

pub(crate) async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&ns))
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}
