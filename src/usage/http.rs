//! The one HTTP GET both sources make: bounded in time and in body size, with errors that name the endpoint without
//! its credentials and never quote the body.

use std::time::Duration;

use super::SourceError;

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

/// An answer: its status and as much of the body as was read.
pub(crate) struct Answer {
    pub status: reqwest::StatusCode,
    /// The body for a 2xx answer; for any other, the body only if it fits in `error_body_limit`, else empty.
    pub body: Vec<u8>,
}

/// GETs `url` with header `Accept: accept`, reading at most `limit` bytes of a 2xx body, all within `timeout`.
///
/// `shown` is the (redacted) name of the endpoint used in errors.
pub(crate) async fn get(
    client: &reqwest::Client,
    url: reqwest::Url,
    shown: &str,
    accept: &'static str,
    timeout: Duration,
    limit: usize,
    error_body_limit: usize,
) -> Result<Answer, SourceError> {
    let exchange = async {
        let response = client
            .get(url)
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(|err| transport_error(shown, timeout, err))?;
        let status = response.status();
        let body = if status.is_success() {
            read_body(response, limit)
                .await
                .map_err(|err| transport_error(shown, timeout, err))?
                .ok_or_else(|| SourceError::TooLarge { url: shown.to_owned(), limit })?
        } else {
            // The error body is only a hint: a failure to read it leaves the status to speak for itself.
            read_body(response, error_body_limit).await.ok().flatten().unwrap_or_default()
        };
        Ok(Answer { status, body })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(SourceError::Timeout { url: shown.to_owned(), timeout }))
}

/// Reads the body, or `None` as soon as it is known to exceed `limit` bytes.
async fn read_body(mut response: reqwest::Response, limit: usize) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|length| length > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Describes a failure to send the request or to read the answer.
fn transport_error(shown: &str, timeout: Duration, err: reqwest::Error) -> SourceError {
    let url = shown.to_owned();
    if err.is_timeout() {
        return SourceError::Timeout { url, timeout };
    }
    if err.is_builder() {
        return SourceError::InvalidUrl { url, detail: describe(err) };
    }
    if err.is_body() || err.is_decode() {
        return SourceError::InvalidResponse { url, detail: format!("reading the body failed: {}", describe(err)) };
    }
    SourceError::Unreachable { url, detail: describe(err) }
}

/// The error and its causes joined by `: `, without the URL (reqwest's message would quote it, credentials and all).
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
