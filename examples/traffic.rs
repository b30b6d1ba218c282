//! A simulated API gateway for trying Keyward's usage metering by hand.
//!
//! It serves per-key request counters on a Prometheus metrics endpoint, the way a gateway does, and lets you change
//! the traffic while it runs:
//!
//! ```text
//! cargo run --example traffic -- --rps 500
//! cargo run --example traffic -- --rps 500 --keys demo,search --listen 127.0.0.1:9100
//! ```
//!
//! Then type `2000` + Enter for 2000 requests a second in total, split evenly over the keys, or `demo=800` to set
//! one key (a new key name adds it). The defaults match `examples/ratelimitpolicy-demo.yaml`, the policy that
//! `cargo run -- dev` applies: counter `gateway_requests_total`, key label `api_key`, port 9100, path `/metrics`; and
//! the key `demo` is the ApiKey of `examples/apikey-demo-fast-rotation.yaml`, which Keyward matches by name (or by
//! keyId).

use std::collections::BTreeMap;

use clap::Parser;
use keyward::devenv::traffic::TrafficSim;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
#[command(about = "Serve simulated per-key gateway request counters for Keyward's usage.scrape")]
struct Args {
    /// Total requests per second, split evenly over the keys.
    #[arg(long)]
    rps: f64,
    /// API keys (ApiKey names or keyIds) that send traffic, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "demo")]
    keys: Vec<String>,
    /// Address to serve /metrics on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: String,
    /// Name of the request counter.
    #[arg(long, default_value = "gateway_requests_total")]
    metric: String,
    /// Label that carries the key (the policy's usage.keyLabel).
    #[arg(long, default_value = "api_key")]
    key_label: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let keys: Vec<String> = args.keys.iter().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).collect();
    anyhow::ensure!(!keys.is_empty(), "--keys names no key");
    anyhow::ensure!(args.rps.is_finite() && args.rps >= 0.0, "--rps must be a number >= 0");

    let sim = TrafficSim::start(&args.listen, &args.metric, &args.key_label)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {}: {err}", args.listen))?;
    for key in &keys {
        sim.set_rate(key, args.rps / keys.len() as f64);
    }

    println!("Serving {} with counter {}{{{}=\"<key>\"}}.", sim.url(), args.metric, args.key_label);
    println!(
        "Point a RateLimitPolicy's usage.scrape at it (urls: [{}], metric: {}, keyLabel: {}) and watch \
         `kubectl get rlp,ak -w`.",
        sim.url(),
        args.metric,
        args.key_label
    );
    println!("Type a number for the total requests per second, or key=rps for one key; Ctrl-C stops.");
    print_rates(&sim.rates());

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => {
                    match command(&sim, line.trim()) {
                        Ok(true) => print_rates(&sim.rates()),
                        Ok(false) => {}
                        Err(message) => println!("{message}"),
                    }
                }
                // End of input (or unreadable input): keep serving until Ctrl-C.
                Ok(None) | Err(_) => break,
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
    tokio::signal::ctrl_c().await?;
    Ok(())
}

/// Applies one line of input; `Ok(true)` when the rates changed.
fn command(sim: &TrafficSim, line: &str) -> Result<bool, String> {
    if line.is_empty() {
        return Ok(false);
    }
    let rate = |text: &str| match text.trim().parse::<f64>() {
        Ok(rps) if rps.is_finite() && rps >= 0.0 => Ok(rps),
        _ => Err(format!("{:?} is not a rate: type a number >= 0, or key=rps", text.trim())),
    };
    match line.split_once('=') {
        Some((key, rps)) if !key.trim().is_empty() => sim.set_rate(key.trim(), rate(rps)?),
        Some(_) => return Err("key=rps needs a key name before '='".to_owned()),
        None => split(sim, rate(line)?),
    }
    Ok(true)
}

/// Spreads `total` requests a second evenly over every key the simulator knows.
fn split(sim: &TrafficSim, total: f64) {
    let keys = sim.rates();
    for key in keys.keys() {
        sim.set_rate(key, total / keys.len() as f64);
    }
}

fn print_rates(rates: &BTreeMap<String, f64>) {
    let total: f64 = rates.values().sum();
    let each: Vec<String> = rates.iter().map(|(key, rps)| format!("{key}={rps}")).collect();
    println!("rates (requests/s): {} (total {total})", each.join(" "));
}
