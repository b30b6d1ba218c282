//! HTTP as the tests read the operator's `/healthz`, `/readyz` and `/metrics`: a new connection for every request
//! (no pool, `Connection: close`), so an answer is always the server's answer at that moment, never one kept from
//! before a fault; and the sum of a metric's samples.

use std::time::{Duration, Instant};

/// One answer: status, body, and when it was received.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// When the whole answer was in: proof that it was observed after some event.
    pub at: Instant,
}

/// GET `url` on a fresh connection (10 s bound); None when there is no answer (refused, reset, timed out).
pub async fn get(url: &str) -> Option<Answer> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client");
    let resp = client.get(url).header("Connection", "close").send().await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.text().await.ok()?;
    Some(Answer { status, body, at: Instant::now() })
}

/// `(status, body)` of GET `url`, or None.
pub async fn get_text(url: &str) -> Option<(u16, String)> {
    get(url).await.map(|a| (a.status, a.body))
}

/// Polls GET `url` every 200 ms until it answers `status`; panics after `secs` with the last answer.
pub async fn wait_status(url: &str, status: u16, secs: u64, when: &str) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let answer = get(url).await;
        if let Some(a) = answer.as_ref().filter(|a| a.status == status) {
            return a.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer {status} within {secs}s {when} (last: {:?})",
            answer.map(|a| (a.status, a.body))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that `/readyz` at `addr` answers exactly 200 `ok` on a new connection opened after `after`, and returns
/// that answer. A stale or cached answer cannot pass: the request is made now, and its time is checked.
pub async fn assert_ready_after(addr: &str, after: Instant, when: &str) -> Answer {
    let a = get(&format!("http://{addr}/readyz")).await.unwrap_or_else(|| panic!("/readyz did not answer {when}"));
    assert_eq!((a.status, a.body.trim()), (200, "ok"), "/readyz {when}");
    assert!(a.at > after, "/readyz was observed before the fault it should follow ({when})");
    a
}

/// Sum of a metric's samples (lines starting with `name`) whose labels contain every one of `labels`.
pub fn sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
