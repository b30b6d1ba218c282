//! Usage sources: per-key request rates from Prometheus or from a gateway's metrics endpoint.

pub mod textformat;
