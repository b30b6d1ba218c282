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
    let by_kind = writes_between(&before, &after);
    // Counters: whole, non-negative differences.
    Ok((by_kind.values().map(|d| d.round().max(0.0) as u64).sum(), by_kind))
}

/// The writes counted between two readings of `keyward_api_writes_total`, by controller/kind (non-zero only).
pub(crate) fn writes_between(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let mut by_kind = BTreeMap::new();
    for (labels, v) in after {
        let d = v - before.get(labels).copied().unwrap_or(0.0);
        if d != 0.0 {
            by_kind.insert(labels.clone(), d);
        }
    }
    by_kind
}
