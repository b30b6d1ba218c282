//! `keyward dev`: the README's run command. A local control plane, the CRDs, the examples and the operator in
//! the foreground; Ctrl-C stops all of it.

use std::path::Path;

use super::{ControlPlane, StartError};

/// Why `keyward dev` stopped.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Client(#[from] super::ClientError),
    #[error(transparent)]
    Crds(#[from] crate::operator::crds::CrdError),
    #[error("applying {path} failed:\n{stderr}")]
    Apply { path: String, stderr: String },
    #[error("running kubectl: {0}")]
    Kubectl(#[source] std::io::Error),
    #[error(transparent)]
    Run(#[from] crate::operator::RunError),
    #[error("writing the kubectl wrapper: {0}")]
    Wrapper(#[source] std::io::Error),
}

/// Runs the quickstart until Ctrl-C.
pub async fn dev(dir: &Path, examples: &Path, http_addr: &str) -> Result<(), DevError> {
    let dir = std::path::absolute(dir).map_err(DevError::Wrapper)?;
    eprintln!("keyward dev: starting a local control plane in {}", dir.display());
    let cp = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || ControlPlane::start(&dir)
    })
    .await
    .map_err(|e| DevError::Kubectl(std::io::Error::other(e)))??;
    let client = cp.client().await?;
    crate::operator::crds::install(client.clone()).await?;
    eprintln!("keyward dev: CRDs installed");
    if examples.is_dir() {
        let out = cp
            .run_kubectl([std::ffi::OsStr::new("apply"), "--server-side".as_ref(), "-f".as_ref(), examples.as_os_str()])
            .map_err(DevError::Kubectl)?;
        if !out.status.success() {
            return Err(DevError::Apply {
                path: examples.display().to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
    }
    let bin_dir = dir.join("bin");
    write_kubectl_wrapper(&bin_dir, cp.binary()).map_err(DevError::Wrapper)?;
    println!(
        "\nKeyward is running against a local control plane. In another shell:\n\n  \
         export KUBECONFIG={kc}\n  export PATH={bin}:$PATH   # a kubectl matching the server\n\n  \
         kubectl get apikeys,ratelimitpolicies -A\n  \
         kubectl get apikeys -A -w\n  \
         kubectl describe apikey -n payments checkout\n  \
         kubectl explain apikey.spec.rotation\n\n\
         Watch the gateway follow load: start the simulated gateway (type a new rate + Enter to change it)\n\n  \
         cargo run --example traffic -- --rps 500\n  \
         kubectl get ratelimitpolicy,deployment -n payments -w\n  \
         kubectl describe ratelimitpolicy -n payments demo-tier\n\n\
         The operator's metrics: curl -s http://{http_addr}/metrics | grep ^keyward_\n\n\
         Ctrl-C stops the operator and the control plane.\n",
        kc = cp.kubeconfig().display(),
        bin = bin_dir.display(),
    );
    // Leader election off: one local operator; the seal key kept in the control plane like a deployed operator's.
    // The examples' simulated gateway listens on 127.0.0.1: dev lets sources reach loopback.
    let seal = crate::operator::seal::SealConfig { namespace: "default".into(), name: "keyward-seal".into() };
    let options = crate::operator::Options {
        http_addr: Some(http_addr.to_string()),
        seal: Some(seal),
        sources: crate::usage::Settings::loopback(),
        ..Default::default()
    };
    let result = crate::operator::run(client, options, crate::operator::shutdown_signal()).await;
    eprintln!("keyward dev: stopping the control plane");
    drop(cp);
    Ok(result?)
}

/// `DIR/kubectl`: upstream kubectl from the control plane binary, so newcomers need no kubectl of their own.
fn write_kubectl_wrapper(dir: &Path, bin: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("kubectl");
    std::fs::write(&path, format!("#!/bin/sh\nexec '{}' kubectl \"$@\"\n", bin.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}
