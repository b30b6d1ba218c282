//! What the admin sets for every usage source (flags of `keyward run`), and [`Sources`]: the fenced HTTP client, the
//! limits and the process-wide budget of bytes in flight that every poll shares.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::SourceError;
use super::access::{self, Tls};
use super::fence::{AddressPolicy, FencedResolver, Rule};

/// Default of `--source-max-body-bytes`: 16 MiB.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
/// Default of `--source-max-series`.
pub const MAX_SERIES: usize = 100_000;
/// Default of `--source-max-keys`.
pub const MAX_KEYS: usize = 10_000;
/// Default of `--source-budget-bytes`: 64 MiB.
pub const BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// The flags of `keyward run` for usage sources (flattened into its arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct SourceFlags {
    /// Hosts and CIDRs usage sources may reach, comma-separated (`10.244.0.0/16,*.shop.svc.cluster.local`). Empty:
    /// anything not denied. Checked on the resolved address at connect time.
    #[arg(long = "source-allow", env = "KEYWARD_SOURCE_ALLOW", value_delimiter = ',')]
    pub source_allow: Vec<String>,
    /// Hosts and CIDRs usage sources may never reach, comma-separated. Link-local (169.254.0.0/16, fe80::/10),
    /// unspecified and (without --allow-loopback-sources) loopback addresses are always denied.
    #[arg(long = "source-deny", env = "KEYWARD_SOURCE_DENY", value_delimiter = ',')]
    pub source_deny: Vec<String>,
    /// Let usage sources reach loopback addresses (127.0.0.0/8, ::1): for local development and tests only.
    #[arg(long, env = "KEYWARD_ALLOW_LOOPBACK_SOURCES", action = clap::ArgAction::Set, num_args = 0..=1,
          value_parser = clap::builder::BoolishValueParser::new(),
          default_value_t = false, default_missing_value = "true")]
    pub allow_loopback_sources: bool,
    /// Largest response body a usage source may send, in bytes; a larger one fails the poll.
    #[arg(long, env = "KEYWARD_SOURCE_MAX_BODY_BYTES", default_value_t = MAX_BODY_BYTES)]
    pub source_max_body_bytes: usize,
    /// Most series one poll of a source may read (all endpoints of a scrape together).
    #[arg(long, env = "KEYWARD_SOURCE_MAX_SERIES", default_value_t = MAX_SERIES)]
    pub source_max_series: usize,
    /// Most distinct keys one policy's usage may have.
    #[arg(long, env = "KEYWARD_SOURCE_MAX_KEYS", default_value_t = MAX_KEYS)]
    pub source_max_keys: usize,
    /// Bytes of response bodies held at once by all polls together; a poll waits (within its timeout) for room.
    #[arg(long, env = "KEYWARD_SOURCE_BUDGET_BYTES", default_value_t = BUDGET_BYTES)]
    pub source_budget_bytes: usize,
}

impl SourceFlags {
    /// The settings these flags describe, or what is wrong with them.
    pub fn settings(&self) -> Result<Settings, String> {
        let rules = |entries: &[String], flag: &str| -> Result<Vec<Rule>, String> {
            entries
                .iter()
                .filter(|entry| !entry.trim().is_empty())
                .map(|entry| Rule::parse(entry).map_err(|err| format!("--{flag}: {err}")))
                .collect()
        };
        let settings = Settings {
            policy: AddressPolicy {
                allow: rules(&self.source_allow, "source-allow")?,
                deny: rules(&self.source_deny, "source-deny")?,
                allow_loopback: self.allow_loopback_sources,
            },
            limits: Limits {
                max_body_bytes: self.source_max_body_bytes,
                max_series: self.source_max_series,
                max_keys: self.source_max_keys,
            },
            budget_bytes: self.source_budget_bytes,
            ..Settings::default()
        };
        if settings.limits.max_body_bytes == 0 || settings.limits.max_series == 0 || settings.limits.max_keys == 0 {
            return Err("--source-max-body-bytes, --source-max-series and --source-max-keys must be > 0".into());
        }
        if settings.budget_bytes < settings.limits.max_body_bytes {
            return Err("--source-budget-bytes must be at least --source-max-body-bytes".into());
        }
        if settings.budget_bytes > Semaphore::MAX_PERMITS {
            return Err("--source-budget-bytes is too large".into());
        }
        Ok(settings)
    }
}

/// Caps on what one poll reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of one response body.
    pub max_body_bytes: usize,
    /// Series read by one poll of a source.
    pub max_series: usize,
    /// Distinct keys of one policy's usage.
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: MAX_BODY_BYTES, max_series: MAX_SERIES, max_keys: MAX_KEYS }
    }
}

/// Everything the admin decides about usage sources.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Which addresses sources may reach.
    pub policy: AddressPolicy,
    /// Caps per poll.
    pub limits: Limits,
    /// Bytes of bodies in flight across all polls.
    pub budget_bytes: usize,
    /// Longest wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer.
    pub read_timeout: Duration,
}

impl Default for Settings {
    /// The defaults of the flags: loopback denied.
    fn default() -> Self {
        Settings {
            policy: AddressPolicy::default(),
            limits: Limits::default(),
            budget_bytes: BUDGET_BYTES,
            connect_timeout: Duration::from_secs(3),
            read_timeout: Duration::from_secs(5),
        }
    }
}

impl Settings {
    /// The defaults with loopback allowed (`keyward dev`, tests).
    pub fn loopback() -> Self {
        let mut settings = Settings::default();
        settings.policy.allow_loopback = true;
        settings
    }
}

/// The handle every source polls through: a fenced HTTP client (the policy in its resolver, no redirects, no proxy,
/// connect and read timeouts), the limits, and the shared budget. Cheap to clone.
#[derive(Clone)]
pub struct Sources {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    settings: Settings,
    budget: Arc<Semaphore>,
}

impl Sources {
    /// A handle with its own client and budget.
    pub fn new(settings: Settings) -> Sources {
        let budget = Arc::new(Semaphore::new(settings.budget_bytes.min(Semaphore::MAX_PERMITS)));
        let client = build_client(&settings);
        Sources { inner: Arc::new(Inner { client, settings, budget }) }
    }

    /// The HTTP client.
    pub(crate) fn client(&self) -> &reqwest::Client {
        &self.inner.client
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    /// The caps per poll.
    pub fn limits(&self) -> Limits {
        self.inner.settings.limits
    }

    /// Waits for `bytes` of the budget (at most the whole budget, so a wait always ends).
    pub(crate) async fn reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let wanted = bytes.min(self.inner.settings.budget_bytes).min(u32::MAX as usize);
        // NB: `wanted` fits in u32 (clamped above); the semaphore is never closed, so `None` cannot happen.
        self.inner.budget.clone().acquire_many_owned(u32::try_from(wanted).ok()?).await.ok()
    }

    /// Bytes of the budget free now (for tests).
    pub fn budget_available(&self) -> usize {
        self.inner.budget.available_permits()
    }
}

const USER_AGENT: &str = concat!("keyward/", env!("CARGO_PKG_VERSION"));

/// A client builder with the fence: the policy in the resolver, no redirects, no proxy, the timeouts.
fn fenced_builder(settings: &Settings) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(USER_AGENT)
        // A redirect is an error: following one would leave the fence (and the tenant's choice of target).
        .redirect(reqwest::redirect::Policy::none())
        // NB: through a proxy the resolver would check the proxy's address, not the source's.
        .no_proxy()
        .connect_timeout(settings.connect_timeout)
        .read_timeout(settings.read_timeout)
        .dns_resolver(Arc::new(FencedResolver::new(Arc::new(settings.policy.clone()))))
}

impl Sources {
    /// A client of a source's own for TLS settings other than the defaults, fenced like the shared one: a CA bundle
    /// instead of the system's roots, a server name to verify instead of the address's host, or no verification.
    pub(crate) fn client_for(&self, tls: &Tls) -> Result<reqwest::Client, SourceError> {
        let builder = fenced_builder(&self.inner.settings);
        let builder = if tls.insecure_skip_verify {
            builder.danger_accept_invalid_certs(true)
        } else if let Some(name) = &tls.server_name {
            builder.use_preconfigured_tls(access::named_config(tls.ca_pem.as_deref(), name)?)
        } else if let Some(pem) = &tls.ca_pem {
            access::certificates(pem)?.into_iter().fold(builder.tls_built_in_root_certs(false), |b, der| {
                match reqwest::Certificate::from_der(&der) {
                    Ok(cert) => b.add_root_certificate(cert),
                    Err(_) => b,
                }
            })
        } else {
            return Ok(self.inner.client.clone());
        };
        builder.build().map_err(|e| SourceError::InvalidTls { detail: format!("the TLS client cannot be built: {e}") })
    }
}

fn build_client(settings: &Settings) -> reqwest::Client {
    let builder = || fenced_builder(settings);
    match builder().build() {
        Ok(client) => client,
        Err(err) => {
            // NB: the only failure of this configuration is a native root store with no usable certificate; plain
            // http:// endpoints still work without it, and https:// ones then fail with a TLS error per poll.
            tracing::warn!(error = %err, "no usable system root certificates; https usage sources will fail");
            // Without native roots nothing fallible is left (a valid constant user agent, the built-in ring
            // provider), so the panicking `Default` fallback is never reached.
            builder().tls_built_in_native_certs(false).build().unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        flags: SourceFlags,
    }

    fn parse(args: &[&str]) -> Result<Settings, String> {
        let cli =
            Cli::try_parse_from(std::iter::once("keyward").chain(args.iter().copied())).map_err(|e| e.to_string())?;
        cli.flags.settings()
    }

    #[test]
    fn defaults_deny_loopback_and_cap_everything() {
        let settings = parse(&[]).unwrap();
        assert_eq!(settings, Settings::default());
        assert!(!settings.policy.allow_loopback);
        assert_eq!(settings.limits, Limits { max_body_bytes: 16 << 20, max_series: 100_000, max_keys: 10_000 });
    }

    #[test]
    fn flags_parse_lists_and_the_loopback_switch() {
        let settings = parse(&[
            "--source-allow=10.244.0.0/16, *.shop.svc",
            "--source-deny",
            "10.244.7.0/24",
            "--allow-loopback-sources",
            "--source-max-keys=5",
        ])
        .unwrap();
        assert_eq!(settings.policy.allow.len(), 2);
        assert_eq!(settings.policy.deny, vec![Rule::parse("10.244.7.0/24").unwrap()]);
        assert!(settings.policy.allow_loopback);
        assert_eq!(settings.limits.max_keys, 5);
        assert!(!parse(&["--allow-loopback-sources=false"]).unwrap().policy.allow_loopback);
        assert!(parse(&["--allow-loopback-sources=true"]).unwrap().policy.allow_loopback);
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(parse(&["--source-allow=10.0.0.1/8"]).unwrap_err().contains("--source-allow"));
        assert!(parse(&["--source-deny=http://x"]).unwrap_err().contains("--source-deny"));
        assert!(parse(&["--source-max-series=0"]).is_err());
        assert!(parse(&["--source-budget-bytes=1024"]).unwrap_err().contains("budget"));
    }

    #[tokio::test]
    async fn the_budget_is_shared_and_released() {
        let sources = Sources::new(Settings { budget_bytes: 1000, ..Settings::loopback() });
        let a = sources.reserve(600).await.unwrap();
        assert_eq!(sources.budget_available(), 400);
        // More than the whole budget waits only for the whole budget.
        let wait = tokio::time::timeout(Duration::from_millis(50), sources.reserve(5000)).await;
        assert!(wait.is_err(), "reserved while 600 bytes were held");
        drop(a);
        let all = sources.reserve(5000).await.unwrap();
        assert_eq!((all.num_permits(), sources.budget_available()), (1000, 0));
    }
}
