//! The idle phase: the operator's API writes while nothing is due.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::operator::{Operator, api_writes};

/// API writes the operator counts in its own metrics over `span`: (total, by controller/kind).
pub(crate) async fn idle(op: &Operator, span: Duration) -> anyhow::Result<(u64, BTreeMap<String, f64>)> {
    let before = api_writes(&op.addr).await?;
    say!("idle: watching the operator's API writes for {}s with nothing due", span.as_secs());
    tokio::time::sleep(span).await;
    let after = api_writes(&op.addr).await?;
    let mut by_kind = BTreeMap::new();
    for (labels, v) in &after {
        let d = v - before.get(labels).copied().unwrap_or(0.0);
        if d != 0.0 {
            by_kind.insert(labels.clone(), d);
        }
    }
    // Counters: whole, non-negative differences.
    Ok((by_kind.values().map(|d| d.round().max(0.0) as u64).sum(), by_kind))
}
