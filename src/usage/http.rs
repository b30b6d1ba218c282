//! The one HTTP GET both sources make: fenced (see [`super::fence`]), bounded in time, in body size and by the shared
//! budget, streaming the body to a sink as it arrives, with errors that name the endpoint without its credentials and
//! never quote the body.

use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;

use super::SourceError;
use super::config::Sources;
use super::fence::{Forbidden, NoAddress};

/// Maximum characters of a transport error's description kept in a [`SourceError`].
const DETAIL_CHARS: usize = 300;

/// `url` with any `user:password@` replaced by `***@`, for messages. Everything else is kept as written.
///
/// A URL too broken to parse loses everything up to its last `@`, since where its credentials end is unclear.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // As the WHATWG URL parser does: the authority ends at the first `/`, `?`, `#` or `\\`, and the userinfo at
    // the last `@` before that.
    let authority_end = if reqwest::Url::parse(url).is_ok() {
        rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len())
    } else {
        rest.len()
    };
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// The first `max` characters of `text`, with `...` appended when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if out.len() < text.len() {
        out.push_str("...");
    }
    out
}

/// Receives a 2xx body chunk by chunk, as it arrives.
pub(crate) trait BodySink: Send {
    /// Takes the next chunk. An error stops reading: the poll fails with it.
    fn feed(&mut self, chunk: &[u8]) -> Result<(), SourceError>;
    /// Bytes the sink still holds after the last chunk (a partial line, a buffered document).
    fn retained(&self) -> usize;
    /// Bytes the sink will hold once it has taken `chunk`.
    fn retained_after(&self, chunk: &[u8]) -> usize;

    /// Whether what the sink holds fits in the bytes outside the budget ([`FREE_BYTES`]).
    fn holds_little(&self) -> bool {
        self.retained() <= FREE_BYTES
    }
}

/// How an exchange ended when it did not fail.
pub(crate) enum Answer {
    /// A 2xx answer, its whole body fed to the sink; the budget the sink still retains stays reserved until this
    /// is dropped (after the sink's content is parsed).
    Fed(Option<OwnedSemaphorePermit>),
    /// Another status (not a redirect), with the body if it fits in the error body limit (else empty).
    Status { status: u16, body: Vec<u8> },
}

/// GETs `url` with header `Accept: accept` through the fenced client of `sources`, feeding a 2xx body to `sink`,
/// all within `timeout`. The body counts against the per-response cap and, chunk by chunk, the shared budget.
///
/// `shown` is the (redacted) name of the endpoint used in errors.
pub(crate) async fn get(
    sources: &Sources,
    url: reqwest::Url,
    shown: &str,
    accept: &'static str,
    timeout: Duration,
    sink: &mut impl BodySink,
    error_body_limit: usize,
) -> Result<Answer, SourceError> {
    let plain = Via { client: sources.client(), headers: &reqwest::header::HeaderMap::new() };
    get_via(sources, plain, (url, shown, accept), timeout, sink, error_body_limit).await
}

/// The client a request goes through (the shared one, or a source's own for its TLS settings) and the headers it
/// carries (credentials among them, marked sensitive).
#[derive(Clone, Copy)]
pub(crate) struct Via<'a> {
    pub client: &'a reqwest::Client,
    pub headers: &'a reqwest::header::HeaderMap,
}

/// [`get`] through `via`; `target` is the URL, its redacted name and the `Accept` header.
pub(crate) async fn get_via(
    sources: &Sources,
    via: Via<'_>,
    (url, shown, accept): (reqwest::Url, &str, &'static str),
    timeout: Duration,
    sink: &mut impl BodySink,
    error_body_limit: usize,
) -> Result<Answer, SourceError> {
    let exchange = async {
        check_ip_literal(sources, &url, shown)?;
        let response = via
            .client
            .get(url)
            .headers(via.headers.clone())
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(|err| transport_error(sources, shown, timeout, err))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(SourceError::Redirect { url: shown.to_owned(), status: status.as_u16() });
        }
        if !status.is_success() {
            // The error body is only a hint: a failure to read it leaves the status to speak for itself.
            let mut buffer = Buffer::new(error_body_limit);
            let body = match read(sources, response, shown, timeout, error_body_limit, &mut buffer).await {
                Ok(_) => buffer.bytes,
                Err(_) => Vec::new(),
            };
            return Ok(Answer::Status { status: status.as_u16(), body });
        }
        let reserved = read(sources, response, shown, timeout, sources.limits().max_body_bytes, sink).await?;
        Ok(Answer::Fed(reserved))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(SourceError::Timeout { url: shown.to_owned(), timeout }))
}

/// A URL whose host is an IP literal is never resolved, so the resolver's check does not run: check it here.
fn check_ip_literal(sources: &Sources, url: &reqwest::Url, shown: &str) -> Result<(), SourceError> {
    let Some(host) = url.host_str() else { return Ok(()) };
    let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() else {
        return Ok(());
    };
    sources.settings().policy.check_ip(ip).map_err(|why| {
        tracing::debug!(url = %shown, ?why, "usage source refused: its address is forbidden");
        SourceError::Forbidden { url: shown.to_owned(), host: host.to_owned() }
    })
}

/// Bytes a sink may hold outside the budget. Small answers (the usual case), and the text format, which keeps only a
/// partial line, then never wait behind large answers; what this adds up to is bounded by the polls in flight.
pub(crate) const FREE_BYTES: usize = 64 * 1024;

/// Feeds the body to `sink` chunk by chunk, failing once more than `limit` bytes arrived.
///
/// Once the sink would hold more than [`FREE_BYTES`], the rest of what this answer may hold (up to the cap, or its
/// Content-Length) is reserved from the budget at once, before the chunk is taken; it is released when the sink
/// holds little again, or returned to the caller to keep while it parses. A poll thus waits for the budget only
/// while it holds none of it, so polls never wait for each other in a circle, and the semaphore's first-come order
/// serves each in turn.
async fn read(
    sources: &Sources,
    mut response: reqwest::Response,
    shown: &str,
    timeout: Duration,
    limit: usize,
    sink: &mut impl BodySink,
) -> Result<Option<OwnedSemaphorePermit>, SourceError> {
    let too_large = || SourceError::TooLarge { url: shown.to_owned(), limit };
    let length = response.content_length();
    if length.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let most = length.map_or(limit, |length| usize::try_from(length).unwrap_or(limit).min(limit));
    let mut total = 0usize;
    let mut held: Option<OwnedSemaphorePermit> = None;
    while let Some(chunk) = response.chunk().await.map_err(|err| transport_error(sources, shown, timeout, err))? {
        total = total.saturating_add(chunk.len());
        if total > limit {
            return Err(too_large());
        }
        let beyond = sink.retained_after(&chunk).saturating_sub(FREE_BYTES);
        if beyond > 0 && held.is_none() {
            held = sources.reserve(most.saturating_sub(FREE_BYTES).max(beyond)).await;
        }
        sink.feed(&chunk)?;
        drop(chunk);
        if sink.holds_little() {
            held = None;
        }
    }
    Ok(held)
}

/// A sink that keeps the whole body (bounded by the cap it is read with); its allocation never exceeds the cap.
pub(crate) struct Buffer {
    pub bytes: Vec<u8>,
    limit: usize,
}

impl Buffer {
    /// A buffer for a body of at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self { bytes: Vec::new(), limit }
    }
}

impl Buffer {
    /// The capacity after taking `add` more bytes: doubling up to [`FREE_BYTES`], then the whole cap at once. The
    /// budget for the cap is reserved at that moment anyway, and pages count only once written, so a large answer
    /// is never copied from a smaller allocation into a larger one (which would hold both for a moment).
    fn grown(&self, add: usize) -> usize {
        let needed = self.bytes.len() + add;
        if needed <= self.bytes.capacity() {
            self.bytes.capacity()
        } else if needed <= FREE_BYTES {
            needed.saturating_mul(2).min(FREE_BYTES)
        } else {
            self.limit.max(needed)
        }
    }
}

impl BodySink for Buffer {
    fn feed(&mut self, chunk: &[u8]) -> Result<(), SourceError> {
        let grown = self.grown(chunk.len());
        self.bytes.reserve_exact(grown - self.bytes.len());
        self.bytes.extend_from_slice(chunk);
        Ok(())
    }

    fn retained(&self) -> usize {
        self.bytes.capacity()
    }

    fn retained_after(&self, chunk: &[u8]) -> usize {
        self.grown(chunk.len())
    }
}

/// Describes a failure to send the request or to read the answer.
fn transport_error(sources: &Sources, shown: &str, timeout: Duration, err: reqwest::Error) -> SourceError {
    let url = shown.to_owned();
    if let Some(forbidden) = find_in_chain::<Forbidden>(&err) {
        return SourceError::Forbidden { url, host: forbidden.host.clone() };
    }
    if err.is_timeout() {
        let settings = sources.settings();
        let limit = if err.is_connect() { settings.connect_timeout } else { settings.read_timeout };
        return SourceError::Timeout { url, timeout: limit.min(timeout) };
    }
    if err.is_builder() {
        return SourceError::InvalidUrl { url, detail: describe(err) };
    }
    if err.is_body() || err.is_decode() {
        tracing::debug!(%url, error = %describe(err), "reading a usage source's answer failed");
        return SourceError::InvalidResponse { url, detail: "reading the body failed".to_owned() };
    }
    if find_in_chain::<NoAddress>(&err).is_some() {
        return SourceError::Unreachable { url, detail: "the host name resolves to no address".to_owned() };
    }
    SourceError::Unreachable { url, detail: describe(err) }
}

/// The first error of type `E` in `err`'s chain of causes.
fn find_in_chain<'e, E: std::error::Error + 'static>(err: &'e (dyn std::error::Error + 'static)) -> Option<&'e E> {
    let mut current = Some(err);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

/// The error and its causes joined by `: `, without the URL (reqwest's message would quote it, credentials and all).
/// These are the HTTP and TLS libraries' own descriptions, never bytes of the answer.
fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut parts: Vec<String> = vec![err.to_string()];
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        let text = cause.to_string();
        // hyper and reqwest repeat their cause in their own message now and then; say each thing once.
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    truncate(&parts.join(": "), DETAIL_CHARS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_only() {
        let cases = [
            ("http://user:pass@host:9090/metrics", "http://***@host:9090/metrics"),
            ("https://token@host", "https://***@host"),
            ("http://user:p%40ss@host/a?b=c@d", "http://***@host/a?b=c@d"),
            ("http://host:9090/path@x?q=a@b", "http://host:9090/path@x?q=a@b"),
            ("http://host", "http://host"),
            ("user:pass@host/x", "***@host/x"),
            ("http://u:p/ss@host:x/y", "http://***@host:x/y"),
            ("", ""),
        ];
        for (url, want) in cases {
            assert_eq!(redact_url(url), want, "for {url}");
        }
    }

    #[test]
    fn truncates_by_characters() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("ééééé", 2), "éé...");
        assert_eq!(truncate("", 0), "");
    }
}
