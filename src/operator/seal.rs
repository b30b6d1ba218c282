//! The operator's seal key (see [`crate::apikey::seal`]): kept in a Secret in the operator's namespace, created with
//! a random key on first start. Losing it makes every sealed Secret look edited (and every key would be replaced),
//! so a missing seal Secret is created only when no Secret in scope carries a seal yet; otherwise start-up stops and
//! says how to restore it.

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, PostParams};
use kube::core::PartialObjectMeta;

use crate::apikey::book::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::apikey::seal::{KEY_BYTES, SEAL, Sealer};

/// Data entry of the current seal key.
pub const CURRENT: &str = "current";
/// Data entry of the previous seal key, still accepted while Secrets are sealed again.
pub const PREVIOUS: &str = "previous";

/// Where the seal key lives.
#[derive(Clone, Debug)]
pub struct SealConfig {
    pub namespace: String,
    pub name: String,
}

/// Why the seal key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("cannot read the seal key Secret {ns}/{name}: {source}")]
    Read { ns: String, name: String, source: kube::Error },
    #[error("cannot create the seal key Secret {ns}/{name}: {source}")]
    Create { ns: String, name: String, source: kube::Error },
    #[error(
        "the seal key Secret {ns}/{name} is missing, but Secret {sealed} (and maybe others) is sealed with it: restore \
         the seal key Secret from your backup; starting with a new key would make every sealed key look edited and \
         replace it"
    )]
    Lost { ns: String, name: String, sealed: String },
    #[error("the seal key Secret {ns}/{name} has no usable `current` entry (at least {KEY_BYTES} bytes)")]
    Invalid { ns: String, name: String },
}

/// Loads the seal keys, creating the Secret with a random key when it is missing and nothing is sealed yet.
pub async fn load_or_create(client: &kube::Client, cfg: &SealConfig) -> Result<Sealer, SealError> {
    let (ns, name) = (cfg.namespace.clone(), cfg.name.clone());
    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let read = |source| SealError::Read { ns: ns.clone(), name: name.clone(), source };
    let secret = match api.get_opt(&name).await.map_err(read)? {
        Some(s) => s,
        None => {
            refuse_if_sealed(client, cfg).await?;
            create(&api, cfg).await?
        }
    };
    sealer(&secret).ok_or(SealError::Invalid { ns, name })
}

/// The keys in the Secret's data.
fn sealer(secret: &Secret) -> Option<Sealer> {
    let data = secret.data.as_ref()?;
    let current = data.get(CURRENT)?.0.clone();
    Sealer::new(current, data.get(PREVIOUS).map(|p| p.0.clone()))
}

/// Fails when a Secret of Keyward's in the cluster (or in the seal Secret's namespace, where the operator may list
/// nothing else) already carries a seal.
async fn refuse_if_sealed(client: &kube::Client, cfg: &SealConfig) -> Result<(), SealError> {
    let read = |source| SealError::Read { ns: cfg.namespace.clone(), name: cfg.name.clone(), source };
    let lp = ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")).limit(500);
    let all: Api<PartialObjectMeta<Secret>> = Api::all(client.clone());
    let page = match all.list_metadata(&lp).await {
        Ok(page) => page,
        // NB: namespaced RBAC cannot list Secrets cluster-wide (and the chart grants no list in the operator's own
        // namespace): the check is skipped, and the docs say to back the seal key up.
        Err(kube::Error::Api(s)) if s.code == 403 => {
            tracing::warn!(
                "cannot list Keyward's Secrets to check that none is sealed with a lost key; creating the seal key"
            );
            return Ok(());
        }
        Err(e) => return Err(read(e)),
    };
    let sealed = page.items.iter().find(|s| s.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(SEAL)));
    match sealed {
        Some(s) => Err(SealError::Lost {
            ns: cfg.namespace.clone(),
            name: cfg.name.clone(),
            sealed: format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or_default(),
                s.metadata.name.as_deref().unwrap_or_default()
            ),
        }),
        None => Ok(()),
    }
}

/// Creates the seal Secret with a random key; another replica creating it first is fine (its key is read).
async fn create(api: &Api<Secret>, cfg: &SealConfig) -> Result<Secret, SealError> {
    let mut key = vec![0u8; KEY_BYTES];
    // NB: getrandom fails only where the OS has no random source; the key would then be all zeros, so refuse.
    if getrandom::fill(&mut key).is_err() {
        return Err(SealError::Invalid { ns: cfg.namespace.clone(), name: cfg.name.clone() });
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            labels: Some([("app.kubernetes.io/name".to_string(), "keyward".to_string())].into()),
            annotations: Some(
                [("keyward.dev/role".to_string(), "seal key: back it up; see docs/security.md".to_string())].into(),
            ),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        data: Some([(CURRENT.to_string(), ByteString(key))].into()),
        ..Default::default()
    };
    let pp = PostParams { field_manager: Some("keyward".into()), ..Default::default() };
    match api.create(&pp, &secret).await {
        Ok(s) => {
            tracing::info!(namespace = %cfg.namespace, name = %cfg.name, "created the seal key Secret");
            Ok(s)
        }
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(&cfg.name).await.map_err(|source| SealError::Read {
            ns: cfg.namespace.clone(),
            name: cfg.name.clone(),
            source,
        }),
        Err(source) => Err(SealError::Create { ns: cfg.namespace.clone(), name: cfg.name.clone(), source }),
    }
}
