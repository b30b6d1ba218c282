//! Every integration test that can share one control plane: one real kube-apiserver (with etcd and the
//! kube-controller-manager) for the whole binary, started on first use, Keyward's CRDs installed once, one namespace
//! per test. Tests that need an operator start their own `keyward run` scoped to their namespace
//! (`common::operator::scoped`), so operators never act on another test's objects; leader-election tests keep
//! their Lease in their own namespace with a name of their own.
//!
//! What must own a control plane has its own binary, each saying why: `tests/restart.rs` (stops the API server),
//! `tests/crash.rs` (the crash suite), `tests/run_cli.rs` (runs before the CRDs exist), `tests/malformed/` (swaps
//! the CRDs), `tests/chart_identity.rs` (an operator that watches every namespace, as the cluster-scoped chart
//! runs it), `tests/tenant.rs` (loosens the CRDs to store what no schema accepts today). `tests/fuzz.rs` needs no cluster and runs on its own.

#[path = "../common/mod.rs"]
mod common;

mod admission;
mod api_server;
mod apikey;
mod apikey_safety;
mod argocd;
mod calendar;
mod crds;
mod docs;
mod endpoints;
mod enforce;
mod examples;
mod faults;
mod fencing;
mod gateways;
mod helm;
mod metrics_auth;
mod monitoring;
mod operations;
mod prometheus;
mod prometheus_auth;
mod ratelimit;
mod revocation;
mod rotation;
mod shell;
mod sources;
mod usage;
mod verify_format;
