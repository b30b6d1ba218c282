//! Keyward: a Kubernetes operator for the lifecycle of API keys.
//!
//! See `DESIGN` in the repository for the shape of the code: `api` holds the custom resources, `devenv` the local
//! control plane used by tests and `keyward dev`, `run` the operator's entry point.
#![forbid(unsafe_code)]

pub mod api;
pub mod apikey;
pub mod cli;
pub mod crashpoint;
pub mod devenv;
pub mod keys;
pub mod liveness;
pub mod metrics;
pub mod minimums;
pub mod operator;
pub mod ratelimit;
pub mod runtime;
pub mod scaling;
pub mod schedule;
pub mod usage;
