//! An HTTP(S) endpoint that answers with JSONL, page after page.

use std::collections::HashSet;
use std::error::Error as _;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, LINK};
use reqwest::{StatusCode, Url};
use tokio::runtime::Handle;

use super::{SourceError, SourceUnit, Window, body_channel, decoded, pump};
use crate::clock::Sleeper;
use crate::config::{HttpSource, Paging};

/// Attempts at one page before giving up, for connection errors, timeouts,
/// 5xx and 429 before the first byte of the body. A body cut short is never
/// retried: what was already read cannot be taken back.
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// A longer `Retry-After` ends the pull instead of holding the run.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// `Retry-After` in seconds (the delta form, or an HTTP date from now).
fn retry_after_seconds(response: &reqwest::Response) -> Option<u64> {
    let value = response.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(seconds);
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((date.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds().max(0) as u64)
}

pub(super) struct HttpPages {
    client: reqwest::Client,
    runtime: Handle,
    paging: Paging,
    token_env: Option<String>,
    authorization: Option<HeaderValue>,
    /// Wait at most this long for the response, and then for each piece of the body.
    timeout: Duration,
    /// The first page's URL with the window's parameters; cursors are added to it.
    first_url: Url,
    next_url: Option<Url>,
    page: u64,
    /// Every URL requested, to stop an endpoint whose paging loops.
    requested: HashSet<Url>,
    /// An error found in a page's headers, reported after that page's body.
    pending_error: Option<SourceError>,
    /// Waits between tries.
    sleeper: Sleeper,
}

impl HttpPages {
    pub(super) fn open(config: &HttpSource, window: &Window, runtime: Handle, sleeper: Sleeper) -> Result<Self> {
        let mut first_url = Url::parse(&config.url).map_err(|error| {
            anyhow::anyhow!("source.url is not a valid URL ({error}); write it as https://host/path")
        })?;
        if let (Some(param), Some(since)) = (&config.since_param, window.since) {
            first_url = with_query_param(&first_url, param, &rfc3339(since));
        }
        if let Some(param) = &config.until_param {
            first_url = with_query_param(&first_url, param, &rfc3339(window.until));
        }
        let authorization = match &config.token_env {
            Some(var) => Some(bearer_from_env(var, &first_url)?),
            None => None,
        };
        // The config checks it is above 0; a day is as long as any wait makes sense.
        let timeout = Duration::try_from_secs_f64(config.timeout_secs).unwrap_or(MAX_TIMEOUT).min(MAX_TIMEOUT);
        let client = {
            let _in_runtime = runtime.enter();
            reqwest::Client::builder()
                .connect_timeout(timeout)
                .user_agent(concat!("promptloop/", env!("CARGO_PKG_VERSION")))
                .build()
                .context("cannot set up the HTTP client")?
        };
        Ok(Self {
            client,
            runtime,
            paging: config.paging.clone(),
            token_env: config.token_env.clone(),
            authorization,
            timeout,
            requested: HashSet::from([first_url.clone()]),
            next_url: Some(first_url.clone()),
            first_url,
            page: 0,
            pending_error: None,
            sleeper,
        })
    }

    fn page_name(&self, url: &Url) -> String {
        match self.paging {
            Paging::None => display_url(url),
            _ => format!("{} (page {})", display_url(url), self.page),
        }
    }

    async fn request(&self, url: &Url) -> Result<reqwest::Response, String> {
        let mut last_problem = String::new();
        let mut asked_wait: Option<Duration> = None;
        for attempt in 1..=ATTEMPTS {
            if attempt > 1 {
                let backoff = FIRST_BACKOFF * 2u32.pow(attempt - 2);
                self.sleeper.sleep(asked_wait.take().unwrap_or(backoff)).await;
            }
            let mut request =
                self.client.get(url.clone()).header(ACCEPT, "application/x-ndjson, application/jsonl, */*;q=0.5");
            if let Some(authorization) = &self.authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            match tokio::time::timeout(self.timeout, request.send()).await {
                Err(_) => last_problem = format!("no response within {}s", self.timeout.as_secs_f64()),
                Ok(Err(error)) if error.is_builder() => return Err(describe(&error)),
                Ok(Err(error)) => last_problem = describe(&error),
                Ok(Ok(response)) => {
                    let status = response.status();
                    if status.is_success() {
                        return Ok(response);
                    }
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Err(self.refusal(status));
                    }
                    last_problem = format!("HTTP {status}");
                    // A rate limit or maintenance window says how long to wait.
                    if let Some(seconds) = retry_after_seconds(&response) {
                        if seconds > MAX_RETRY_AFTER.as_secs() {
                            return Err(format!(
                                "HTTP {status}: the endpoint asks to wait {seconds}s (Retry-After); pull again later"
                            ));
                        }
                        asked_wait = Some(Duration::from_secs(seconds));
                    }
                }
            }
        }
        Err(format!("{last_problem} (after {ATTEMPTS} attempts); check that the endpoint is up and reachable"))
    }

    fn refusal(&self, status: StatusCode) -> String {
        match (status, &self.token_env) {
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, Some(var)) => format!(
                "the endpoint refused the token in ${var} (HTTP {status}); check that it is current and allowed to read the logs"
            ),
            (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, None) => format!(
                "the endpoint wants authorization (HTTP {status}); set source.token_env to the environment variable holding a bearer token"
            ),
            (StatusCode::NOT_FOUND, _) => format!("HTTP {status}; check source.url"),
            _ => format!("HTTP {status}; check source.url and the endpoint's query parameters"),
        }
    }

    /// The page after the one whose headers these are, if any.
    fn next_page(&mut self, current: &Url, headers: &HeaderMap) -> Result<Option<Url>, String> {
        let next = match &self.paging {
            Paging::None => return Ok(None),
            Paging::Link => {
                let Some(target) = next_link(headers) else { return Ok(None) };
                current.join(&target).map_err(|error| format!("the Link header's next URL is not valid ({error})"))?
            }
            Paging::Cursor { param, header } => {
                let Some(value) = headers.get(header.as_str()) else { return Ok(None) };
                let cursor = value.to_str().map_err(|_| format!("the {header} header is not readable text"))?.trim();
                if cursor.is_empty() {
                    return Ok(None);
                }
                with_query_param(&self.first_url, param, cursor)
            }
        };
        if !self.requested.insert(next.clone()) {
            return Err(format!(
                "the endpoint points back to a page already read ({}); its paging loops, check the endpoint",
                display_url(&next)
            ));
        }
        Ok(Some(next))
    }
}

impl Iterator for HttpPages {
    type Item = Result<SourceUnit, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(error) = self.pending_error.take() {
            self.next_url = None;
            return Some(Err(error));
        }
        let url = self.next_url.clone()?;
        self.page += 1;
        let name = self.page_name(&url);
        let response = match self.runtime.block_on(self.request(&url)) {
            Ok(response) => response,
            Err(message) => {
                self.next_url = None;
                return Some(Err(SourceError::new(name, message)));
            }
        };
        match self.next_page(&url, response.headers()) {
            Ok(next) => self.next_url = next,
            Err(message) => {
                self.next_url = None;
                self.pending_error = Some(SourceError::new(name.clone(), message));
            }
        }
        let (sender, body) = body_channel(&name);
        let idle = self.timeout;
        let chunks = Box::pin(futures::stream::unfold(response, |mut response| async move {
            response.chunk().await.transpose().map(|chunk| (chunk, response))
        }));
        let stalled = format!("no data for {}s in the middle of the body; the endpoint stalled", idle.as_secs_f64());
        let broke = |error: reqwest::Error| format!("{}; the page was not read whole", describe(&error));
        self.runtime.spawn(pump(chunks, sender, idle, stalled, broke));
        Some(Ok(SourceUnit { name, reader: decoded(Box::new(body)) }))
    }
}

fn bearer_from_env(var: &str, url: &Url) -> Result<HeaderValue> {
    let token = match std::env::var(var) {
        Ok(token) if !token.trim().is_empty() => token,
        Ok(_) | Err(std::env::VarError::NotPresent) => bail!(
            "source.token_env: the environment variable {var} is not set or empty; export the bearer token for {} in it",
            display_url(url)
        ),
        Err(std::env::VarError::NotUnicode(_)) => {
            bail!("source.token_env: the environment variable {var} is not valid UTF-8; check what it holds")
        }
    };
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
        anyhow::anyhow!(
            "source.token_env: the token in {var} holds characters an HTTP header cannot carry (a line break?); check what it holds"
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Millisecond precision: the same instant always prints the same way, so a
/// window's `until` and the next window's `since` meet exactly.
fn rfc3339(instant: DateTime<Utc>) -> String {
    instant.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `url` with `key` set to `value`, replacing any value it had.
fn with_query_param(url: &Url, key: &str, value: &str) -> Url {
    let kept: Vec<(String, String)> =
        url.query_pairs().filter(|(k, _)| k != key).map(|(k, v)| (k.into(), v.into())).collect();
    let mut url = url.clone();
    url.query_pairs_mut().clear().extend_pairs(kept).append_pair(key, value);
    url
}

/// The URL as reports show it: no credentials, query string or fragment.
fn display_url(url: &Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// A reqwest error in words, without the URL (its query may be long).
fn describe(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else if error.is_body() || error.is_decode() {
        "the connection broke while reading the body"
    } else if error.is_redirect() {
        "redirect failed"
    } else {
        "the request failed"
    };
    let mut details: Vec<String> = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if details.last() != Some(&text) {
            details.push(text);
        }
        source = cause.source();
    }
    if details.is_empty() { what.to_string() } else { format!("{what}: {}", details.join(": ")) }
}

/// The target of the first link with relation type `next` in the `Link`
/// headers (RFC 8288), as written (maybe relative).
fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(LINK)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(parse_links)
        .find(|link| link.relations().any(|relation| relation.eq_ignore_ascii_case("next")))
        .map(|link| link.target)
}

struct Link {
    target: String,
    /// Parameter names in lower case, values unquoted.
    params: Vec<(String, String)>,
}

impl Link {
    /// The relation types of the first `rel` parameter (later ones are ignored, per RFC 8288).
    fn relations(&self) -> impl Iterator<Item = &str> {
        self.params.iter().find(|(name, _)| name == "rel").into_iter().flat_map(|(_, value)| value.split_whitespace())
    }
}

/// Parses one `Link` header value: `<target>; name="value"; name=token, <target>...`.
/// Commas inside `<...>` and quoted strings do not split links.
fn parse_links(value: &str) -> Vec<Link> {
    let mut links = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            break;
        }
        if !rest.starts_with('<') {
            // Not a link: skip to the next one.
            match rest.find(',') {
                Some(comma) => {
                    rest = &rest[comma + 1..];
                    continue;
                }
                None => break,
            }
        }
        let Some(end) = rest.find('>') else { break };
        let target = rest[1..end].trim().to_string();
        rest = &rest[end + 1..];
        let mut params = Vec::new();
        loop {
            rest = rest.trim_start();
            let Some(after) = rest.strip_prefix(';') else { break };
            rest = after.trim_start();
            let name_end = rest.find(['=', ';', ',']).unwrap_or(rest.len());
            let name = rest[..name_end].trim().to_ascii_lowercase();
            rest = &rest[name_end..];
            let mut param_value = String::new();
            if let Some(after) = rest.strip_prefix('=') {
                rest = after.trim_start();
                if let Some(quoted) = rest.strip_prefix('"') {
                    let mut consumed = quoted.len();
                    let mut chars = quoted.char_indices();
                    while let Some((at, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, escaped)) = chars.next() {
                                    param_value.push(escaped);
                                }
                            }
                            '"' => {
                                consumed = at + 1;
                                break;
                            }
                            c => param_value.push(c),
                        }
                    }
                    rest = &quoted[consumed..];
                } else {
                    let end = rest.find([';', ',']).unwrap_or(rest.len());
                    param_value = rest[..end].trim().to_string();
                    rest = &rest[end..];
                }
            }
            if !name.is_empty() {
                params.push((name, param_value));
            }
        }
        links.push(Link { target, params });
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    fn next_of(value: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(LINK, HeaderValue::from_str(value).unwrap());
        next_link(&headers)
    }

    #[test]
    fn finds_next_among_several_links() {
        let value =
            r#"<https://api.example.com/logs?page=1>; rel="prev", <https://api.example.com/logs?page=3>; rel="next""#;
        assert_eq!(next_of(value).as_deref(), Some("https://api.example.com/logs?page=3"));
    }

    #[test]
    fn rel_may_be_unquoted_a_list_and_any_case() {
        assert_eq!(next_of("</logs?p=2>; rel=next").as_deref(), Some("/logs?p=2"));
        assert_eq!(next_of(r#"</a>; rel="last NEXT""#).as_deref(), Some("/a"));
        assert_eq!(next_of(r#"</a>; rel="nextish""#), None);
    }

    #[test]
    fn commas_inside_targets_and_quoted_params_do_not_split_links() {
        let value = r#"</x?a=1,2>; title="one, two; three"; rel="next", </y>; rel="prev""#;
        assert_eq!(next_of(value).as_deref(), Some("/x?a=1,2"));
        let value = r#"</y>; title="say \"next\", rel=next"; rel="prev", </z>; rel=next"#;
        assert_eq!(next_of(value).as_deref(), Some("/z"));
    }

    #[test]
    fn only_the_first_rel_parameter_counts() {
        assert_eq!(next_of(r#"</a>; rel="prev"; rel="next""#), None);
    }

    #[test]
    fn display_url_drops_credentials_and_query() {
        let url = Url::parse("https://user:secret@logs.example.com/v1/export?token=abc&since=x#frag").unwrap();
        assert_eq!(display_url(&url), "https://logs.example.com/v1/export");
    }

    #[test]
    fn query_param_replaces_an_existing_value() {
        let url = Url::parse("https://h/logs?cursor=old&limit=10").unwrap();
        assert_eq!(with_query_param(&url, "cursor", "n/1+").as_str(), "https://h/logs?limit=10&cursor=n%2F1%2B");
    }
}
