//! The Slack message: the run's headline as Block Kit, posted by bot token
//! (`chat.postMessage`) or incoming webhook through slack-morphism.
//!
//! The message is built once ([`message`]) and has three renderings: the blocks Slack shows,
//! the exact JSON payload ([`to_json`]) and plain text for a terminal ([`to_text`]), so a run
//! without a token can print and save what it would have sent. Every rendering takes the delta,
//! scores, decision and cost from [`Headline`] and [`Cost`], so Slack says what the PR says.
//!
//! Slack's limits (50 blocks, 3,000 characters a section, 150 a header, 10 fields of 2,000,
//! 10 context elements) hold by construction: at most seven blocks, and every text is fitted
//! to its limit, cutting user text at a character with an ellipsis, never the delta.
//!
//! No text from logs reaches Slack (the message is the headline, the cost, links and a
//! publishing note). Whatever text is not our markup goes through `escape` all the same,
//! so it cannot mention (`<!channel>`, `<!here>`, `<@U123>`) or link (`<url|text>`).

use std::time::Duration;

use reqwest::Url;
use serde::Deserialize;
use slack_morphism::errors::{SlackClientApiError, SlackClientError};
use slack_morphism::prelude::*;

use super::Secret;
use crate::clock::Sleeper;
use crate::eval::gate::Decision;
use crate::report::{Cost, Headline};

/// Slack's Web API; GovSlack and tests point [`SlackTarget::Bot`] elsewhere.
pub const DEFAULT_API_URL: &str = "https://slack.com/api/";

const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;
const CONTEXT_MAX: usize = 3000;
const LINK_MAX: usize = SECTION_MAX / 2 - 40;
/// The notification fallback; Slack allows far more, a notification shows far less.
const FALLBACK_MAX: usize = 3000;
/// The pipeline's share of the fallback, so a long name cannot push the delta out.
const FALLBACK_PIPELINE_MAX: usize = 100;
const ELLIPSIS: char = '…';

/// The links a message points to.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Links {
    pub pr_url: Option<String>,
    /// The GitHub Actions run that produced the result.
    pub run_url: Option<String>,
}

/// A Slack message ready to send, print or save.
#[derive(Debug, Clone, PartialEq)]
pub struct SlackMessage {
    /// Top-level `text`: the notification and screen-reader fallback.
    text: String,
    blocks: Vec<SlackBlock>,
    /// The same content for a terminal: unescaped, untruncated.
    plain: String,
}

impl SlackMessage {
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn blocks(&self) -> &[SlackBlock] {
        &self.blocks
    }

    fn content(&self) -> SlackMessageContent {
        SlackMessageContent::new().with_text(self.text.clone()).with_blocks(self.blocks.clone())
    }
}

/// The message for a run: pipeline and decision, the test delta with its interval and n,
/// production → candidate, cost, links, and a note when publishing was partial.
pub fn message(headline: &Headline, cost: &Cost, links: &Links, note: Option<&str>) -> SlackMessage {
    let decision = headline.decision.as_str();
    let delta = headline.delta_text();
    let decision_text = headline.decision_text();
    let scores = headline.scores_text();
    let cost_text = cost.text();
    let more_reasons: &[String] = match headline.decision {
        Decision::Hold if headline.reasons.len() > 1 => &headline.reasons[1..],
        _ => &[],
    };

    let suffix = format!(": {decision}");
    let header = format!("{}{suffix}", fit(&headline.pipeline, HEADER_MAX - slack_len(&suffix)));
    let mut blocks: Vec<SlackBlock> =
        vec![SlackHeaderBlock::new(SlackBlockPlainText::new(header).with_emoji(false).into()).into()];

    // The headline: the delta comes first so that only the gate's reason can be cut.
    let headline_text = Mrkdwn::default()
        .markup("*Test delta:* ")
        .text(&delta)
        .markup("\n*Decision:* ")
        .text(&decision_text)
        .render(SECTION_MAX);
    blocks.push(SlackSectionBlock::new().with_text(md(headline_text)).into());

    let fields = vec![
        md(Mrkdwn::default().markup("*Production → candidate*\n").text(&scores).render(FIELD_MAX)),
        md(Mrkdwn::default().markup("*Cost*\n").text(&cost_text).render(FIELD_MAX)),
    ];
    blocks.push(SlackSectionBlock::new().with_fields(fields).into());

    if !more_reasons.is_empty() {
        let mut also = Mrkdwn::default().markup("*Also:*");
        for reason in more_reasons {
            also = also.markup("\n• ").text(reason);
        }
        blocks.push(SlackSectionBlock::new().with_text(md(also.render(SECTION_MAX))).into());
    }

    if let Some(note) = note.filter(|n| !n.trim().is_empty()) {
        let text = Mrkdwn::default().markup(":warning: *Note:* ").text(note).render(SECTION_MAX);
        blocks.push(SlackSectionBlock::new().with_text(md(text)).into());
    }

    let link_list: Vec<(&str, &str)> = [("Pull request", &links.pr_url), ("Actions run", &links.run_url)]
        .into_iter()
        .filter_map(|(label, url)| url.as_deref().map(|url| (label, url)))
        .collect();
    if !link_list.is_empty() {
        let mut text = Mrkdwn::default();
        for (i, (label, url)) in link_list.iter().enumerate() {
            if i > 0 {
                text = text.markup("  ·  ");
            }
            text = match link_target(url) {
                // Each link gets at most half the section, so one absurd URL cannot crowd out the other.
                Some(target) if slack_len(&target) <= LINK_MAX => text.markup(&format!("<{target}|{label}>")),
                Some(_) => text.markup(&format!("{label}: the link is too long to show here")),
                None => text.markup(&format!("{label}: ")).text(url),
            };
        }
        blocks.push(SlackSectionBlock::new().with_text(md(text.render(SECTION_MAX))).into());
    }

    let context = Mrkdwn::default().markup("Metric: ").text(&headline.metric).markup(" · sent by promptloop");
    let context_element: SlackContextBlockElement = SlackBlockMarkDownText::new(context.render(CONTEXT_MAX)).into();
    blocks.push(SlackContextBlock::new(vec![context_element]).into());

    let text = Mrkdwn::default()
        .text(&fit(&headline.pipeline, FALLBACK_PIPELINE_MAX))
        .markup(&format!(": {decision}, test delta "))
        .text(&delta)
        .render(FALLBACK_MAX);

    let mut plain = format!("{}: {decision}\n", headline.pipeline);
    plain.push_str(&format!("Test delta: {delta}\nDecision: {decision_text}\n"));
    plain.push_str(&format!("Production → candidate: {scores}\nCost: {cost_text}\nMetric: {}\n", headline.metric));
    for reason in more_reasons {
        plain.push_str(&format!("Also: {reason}\n"));
    }
    if let Some(note) = note.filter(|n| !n.trim().is_empty()) {
        plain.push_str(&format!("Note: {note}\n"));
    }
    for (label, url) in &link_list {
        plain.push_str(&format!("{label}: {url}\n"));
    }

    SlackMessage { text, blocks, plain }
}

/// The exact payload an incoming webhook receives (`text` and `blocks`); `chat.postMessage`
/// sends the same with `channel` added.
pub fn to_json(message: &SlackMessage) -> serde_json::Value {
    serde_json::to_value(message.content()).expect("a Slack message serializes to JSON")
}

/// The message as plain text for a terminal.
pub fn to_text(message: &SlackMessage) -> String {
    message.plain.clone()
}

fn md(text: String) -> SlackBlockText {
    SlackBlockMarkDownText::new(text).into()
}

/// A URL as the target of a mrkdwn link, or `None` when it is not a web URL.
fn link_target(url: &str) -> Option<String> {
    let parsed = Url::parse(url.trim()).ok().filter(|u| matches!(u.scheme(), "http" | "https"))?;
    // `|` ends the target and `>` the link; the parser already encodes `<`, `>` and spaces.
    Some(escape(&parsed.as_str().replace('|', "%7C").replace('>', "%3E")))
}

/// Text Slack shows as-is in mrkdwn: its three control characters escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    out
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        c => out.push(c),
    }
}

/// Length as Slack may count it: UTF-16 units, never fewer than characters.
fn slack_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// `text` cut at a character so it fits `max`, with an ellipsis when cut.
fn fit(text: &str, max: usize) -> String {
    if slack_len(text) <= max {
        return text.to_string();
    }
    let mut out = String::new();
    let mut len = 0;
    for c in text.chars() {
        if len + c.len_utf16() + 1 > max {
            break;
        }
        len += c.len_utf16();
        out.push(c);
    }
    out.push(ELLIPSIS);
    out
}

/// mrkdwn built from markup we wrote (kept whole or dropped) and user text (escaped, and cut
/// at a character if it must be), so fitting a limit never breaks an entity or a link.
#[derive(Default)]
struct Mrkdwn {
    pieces: Vec<(bool, String)>,
}

impl Mrkdwn {
    fn markup(mut self, markup: &str) -> Self {
        self.pieces.push((false, markup.to_string()));
        self
    }

    fn text(mut self, text: &str) -> Self {
        self.pieces.push((true, text.to_string()));
        self
    }

    fn render(&self, max: usize) -> String {
        let mut whole = String::new();
        for (is_text, piece) in &self.pieces {
            if *is_text {
                whole.push_str(&escape(piece));
            } else {
                whole.push_str(piece);
            }
        }
        if slack_len(&whole) <= max {
            return whole;
        }
        let budget = max - ELLIPSIS.len_utf16();
        let mut out = String::new();
        let mut len = 0;
        'pieces: for (is_text, piece) in &self.pieces {
            if *is_text {
                for c in piece.chars() {
                    let mut one = String::new();
                    push_escaped(&mut one, c);
                    if len + slack_len(&one) > budget {
                        break 'pieces;
                    }
                    len += slack_len(&one);
                    out.push_str(&one);
                }
            } else {
                if len + slack_len(piece) > budget {
                    break;
                }
                len += slack_len(piece);
                out.push_str(piece);
            }
        }
        out.push(ELLIPSIS);
        out
    }
}

/// Where the message goes.
#[derive(Debug, Clone)]
pub enum SlackTarget {
    /// `chat.postMessage` with a bot token (`xoxb-…`, scope `chat:write`).
    Bot {
        token: Secret,
        /// A channel ID (`C0123456789`) or name (`#releases`).
        channel: String,
        /// The Web API's base, [`DEFAULT_API_URL`] unless GovSlack or a test.
        api_url: String,
    },
    /// An incoming webhook; its URL is the credential.
    Webhook { url: Secret },
}

impl SlackTarget {
    pub fn bot(token: Secret, channel: impl Into<String>) -> Self {
        SlackTarget::Bot { token, channel: channel.into(), api_url: DEFAULT_API_URL.to_string() }
    }

    pub fn webhook(url: Secret) -> Self {
        SlackTarget::Webhook { url }
    }

    /// Where the message is posted, fit for an error message: a webhook's secret path hidden.
    pub fn endpoint(&self) -> String {
        match self {
            SlackTarget::Bot { api_url, .. } => format!("{}/chat.postMessage", api_url.trim_end_matches('/')),
            SlackTarget::Webhook { url } => match Url::parse(url.expose()) {
                Ok(parsed) => {
                    let host = parsed.host_str().unwrap_or("?");
                    match parsed.port() {
                        Some(port) => format!("the incoming webhook {}://{host}:{port}/***", parsed.scheme()),
                        None => format!("the incoming webhook {}://{host}/***", parsed.scheme()),
                    }
                }
                Err(_) => "the incoming webhook".to_string(),
            },
        }
    }

    /// `text` with this target's secrets replaced by `***`.
    fn scrub(&self, text: &str) -> String {
        let mut secrets: Vec<String> = Vec::new();
        match self {
            SlackTarget::Bot { token, .. } => secrets.push(token.expose().to_string()),
            SlackTarget::Webhook { url } => {
                secrets.push(url.expose().to_string());
                if let Ok(parsed) = Url::parse(url.expose()) {
                    if parsed.path().len() > 1 {
                        secrets.push(parsed.path().to_string());
                    }
                    if let Some(last) = parsed.path_segments().and_then(|mut s| s.next_back()) {
                        secrets.push(last.to_string());
                    }
                }
            }
        }
        let mut out = text.to_string();
        for secret in secrets.iter().filter(|s| s.len() >= 4) {
            out = out.replace(secret.as_str(), "***");
        }
        out
    }
}

/// What Slack said when the message landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// The channel's ID and the message's timestamp (its ID within the channel), as far as
    /// Slack's answer gave them: `ok: true` is what says the message landed.
    Bot {
        channel: Option<String>,
        ts: Option<String>,
    },
    Webhook,
}

/// The part of `chat.postMessage`'s answer promptloop reads; whatever else Slack sends
/// (the posted `message`, warnings, metadata) is ignored.
#[derive(Debug, Deserialize)]
struct PostMessageAnswer {
    ok: bool,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    ts: Option<String>,
}

/// How hard to try before giving up.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Tries in all, the first included.
    pub attempts: u32,
    /// The wait before the second try after a 5xx or a network fault, doubled after each.
    pub backoff: Duration,
    /// The longest `Retry-After` honoured; a longer one fails at once rather than stall the run.
    pub max_wait: Duration,
    /// One try's limit.
    pub timeout: Duration,
    /// How the waits between tries are waited: tokio's timer unless a test records them.
    pub sleeper: Sleeper,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 3,
            backoff: Duration::from_secs(1),
            max_wait: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            sleeper: Sleeper::default(),
        }
    }
}

/// Why the message was not posted. Every text is free of the token and the webhook URL.
#[derive(Debug, thiserror::Error)]
pub enum SlackError {
    /// The target cannot be used as given.
    #[error("the Slack target is not usable: {0}")]
    Target(String),
    /// Slack refused the message; trying again will not help until `fix` is done.
    #[error("Slack refused the message at {endpoint} with `{code}`: {fix}")]
    Rejected { endpoint: String, code: String, fix: String },
    /// Slack kept failing (5xx, network, time-outs) through every try.
    #[error(
        "Slack failed {attempts} times at {endpoint}, the last with {last}; the message was not posted. \
         Slack may be down (https://slack-status.com) or the network blocks it: run again later"
    )]
    Unavailable { endpoint: String, attempts: u32, last: String },
    /// Slack's rate limit held through every try, or asked for a longer wait than allowed.
    #[error("Slack rate-limited the message at {endpoint} after {attempts} tries{}; the message was not posted: run again later", .retry_after.map(|d| format!(" (it asked to wait {}s)", d.as_secs())).unwrap_or_default())]
    RateLimited { endpoint: String, attempts: u32, retry_after: Option<Duration> },
    /// An answer that is not what the method answers.
    #[error("Slack answered {endpoint} with something unexpected: {detail}")]
    Unexpected { endpoint: String, detail: String },
}

impl SlackError {
    /// Slack's error code (`channel_not_found`, `no_service`, …), when it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            SlackError::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// Posts `message` to `target`, retrying 5xx answers, network faults and rate limits.
pub async fn post(target: &SlackTarget, message: &SlackMessage) -> Result<Posted, SlackError> {
    post_with(target, message, &Retry::default()).await
}

/// [`post`] with its own retry policy.
pub async fn post_with(target: &SlackTarget, message: &SlackMessage, retry: &Retry) -> Result<Posted, SlackError> {
    let endpoint = target.endpoint();
    let client = client(target)?;
    let attempts = retry.attempts.max(1);
    let mut backoff = retry.backoff;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let outcome = match tokio::time::timeout(retry.timeout, send(&client, target, message)).await {
            Ok(Ok(posted)) => return Ok(posted),
            Ok(Err(err)) => classify(err, target),
            Err(_) => Outcome::Transient(format!("no answer within {}s", retry.timeout.as_secs())),
        };
        let wait = match outcome {
            Outcome::Fatal(err) => return Err(err),
            Outcome::Transient(last) => {
                if attempt >= attempts {
                    return Err(SlackError::Unavailable { endpoint, attempts: attempt, last });
                }
                tracing::warn!(%endpoint, attempt, "Slack failed with {last}; trying again in {backoff:?}");
                let wait = backoff;
                backoff *= 2;
                wait
            }
            Outcome::RateLimited(retry_after) => {
                let too_long = retry_after.is_some_and(|d| d > retry.max_wait);
                if attempt >= attempts || too_long {
                    return Err(SlackError::RateLimited { endpoint, attempts: attempt, retry_after });
                }
                let wait = retry_after.unwrap_or(backoff);
                tracing::warn!(%endpoint, attempt, "Slack rate-limited the message; trying again in {wait:?}");
                wait
            }
        };
        retry.sleeper.sleep(wait).await;
    }
}

type Client = SlackClient<SlackClientHyperHttpsConnector>;

fn client(target: &SlackTarget) -> Result<Client, SlackError> {
    // slack-morphism's own connector is HTTPS-only, which a 127.0.0.1 stand-in cannot serve;
    // this one also speaks plain HTTP, and trusts the system's roots (or Mozilla's, built in,
    // on a machine without any).
    let builder = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(builder) => builder,
        Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
    };
    let https = builder.https_or_http().enable_all_versions().build();
    let mut connector = SlackClientHyperConnector::with_connector(https);
    match target {
        SlackTarget::Bot { token, channel, api_url } => {
            if token.expose().trim().is_empty() {
                return Err(SlackError::Target(
                    "the bot token is empty: set SLACK_BOT_TOKEN to the app's bot token (xoxb-…)".into(),
                ));
            }
            if channel.trim().is_empty() {
                return Err(SlackError::Target(
                    "no channel to post to: set the Slack channel in the pipeline's publish settings".into(),
                ));
            }
            if Url::parse(api_url).map(|u| !matches!(u.scheme(), "http" | "https")).unwrap_or(true) {
                return Err(SlackError::Target(format!(
                    "the Slack API URL `{}` is not an http(s) URL: leave it unset for {DEFAULT_API_URL}",
                    target.scrub(api_url)
                )));
            }
            connector = connector.with_slack_api_url(api_url.trim_end_matches('/'));
        }
        SlackTarget::Webhook { url } => {
            if Url::parse(url.expose()).map(|u| !matches!(u.scheme(), "http" | "https")).unwrap_or(true) {
                return Err(SlackError::Target(
                    "the webhook URL is not an http(s) URL: set SLACK_WEBHOOK_URL to the URL Slack gave for the \
                     incoming webhook (https://hooks.slack.com/services/…)"
                        .into(),
                ));
            }
        }
    }
    Ok(SlackClient::new(connector))
}

async fn send(client: &Client, target: &SlackTarget, message: &SlackMessage) -> Result<Posted, SlackClientError> {
    match target {
        SlackTarget::Bot { token, channel, .. } => {
            let token = SlackApiToken::new(SlackApiTokenValue(token.expose().to_string()));
            let request = SlackApiChatPostMessageRequest::new(SlackChannelId(channel.clone()), message.content());
            // Decoded here rather than as slack-morphism's full response, which requires fields
            // (the posted `message`) that a successful answer need not carry.
            let answer: PostMessageAnswer =
                client.open_session(&token).http_session_api.http_post("chat.postMessage", &request, None).await?;
            match (answer.ok, answer.error) {
                (true, _) => Ok(Posted::Bot { channel: answer.channel, ts: answer.ts }),
                (false, error) => Err(SlackClientError::ApiError(SlackClientApiError::new(
                    error.unwrap_or_else(|| "ok_false_without_error".to_string()),
                ))),
            }
        }
        SlackTarget::Webhook { url } => {
            let url = Url::parse(url.expose()).expect("checked when the client was built");
            client.post_webhook_message(&url, &SlackApiPostWebhookMessageRequest::new(message.content())).await?;
            Ok(Posted::Webhook)
        }
    }
}

enum Outcome {
    Fatal(SlackError),
    /// Worth another try; what went wrong.
    Transient(String),
    RateLimited(Option<Duration>),
}

/// Error codes that mean Slack itself stumbled.
const TRANSIENT_CODES: &[&str] =
    &["internal_error", "fatal_error", "service_unavailable", "request_timeout", "rollup_error"];

fn classify(err: SlackClientError, target: &SlackTarget) -> Outcome {
    let endpoint = target.endpoint();
    match err {
        SlackClientError::ApiError(api) => {
            let body = api.http_response_body.as_deref().unwrap_or_default();
            classify_code(&api.code, None, body, target)
        }
        SlackClientError::RateLimitError(limit) => Outcome::RateLimited(limit.retry_after),
        SlackClientError::HttpError(http) => {
            let status = http.status_code.as_u16();
            let body = http.http_response_body.as_deref().unwrap_or_default();
            // A webhook answers errors in plain text (`no_service`), the Web API in JSON.
            let code = serde_json::from_str::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                .or_else(|| {
                    let word = body.trim();
                    let looks_like_code = !word.is_empty()
                        && word.len() <= 64
                        && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
                    looks_like_code.then(|| word.to_string())
                });
            match code {
                Some(code) if status < 500 => classify_code(&code, Some(status), body, target),
                _ if status >= 500 => Outcome::Transient(format!("HTTP {status}{}", quoted_body(body, target))),
                _ => Outcome::Fatal(SlackError::Unexpected {
                    endpoint,
                    detail: format!("HTTP {status}{}{}", quoted_body(body, target), check_url_hint(target)),
                }),
            }
        }
        SlackClientError::HttpProtocolError(protocol) => Outcome::Transient(format!(
            "a network fault ({})",
            target.scrub(&protocol.cause.map(|c| error_chain(&*c)).unwrap_or_else(|| "no detail".into()))
        )),
        SlackClientError::SystemError(system) => Outcome::Transient(format!(
            "a fault reading the answer ({})",
            target.scrub(&system.cause.map(|c| error_chain(&*c)).unwrap_or_else(|| "no detail".into()))
        )),
        SlackClientError::ProtocolError(protocol) => {
            let body = protocol.json_body.as_deref().unwrap_or_default();
            // slack-morphism hands a 200 answer that is not JSON on as `{}`: its text is lost.
            let what = if body.trim() == "{}" {
                "a success status without the method's JSON answer".to_string()
            } else {
                format!("an answer that does not decode ({}){}", protocol.json_error, quoted_body(body, target))
            };
            Outcome::Fatal(SlackError::Unexpected { endpoint, detail: format!("{what}{}", check_url_hint(target)) })
        }
        other => Outcome::Fatal(SlackError::Unexpected { endpoint, detail: target.scrub(&other.to_string()) }),
    }
}

fn classify_code(code: &str, status: Option<u16>, body: &str, target: &SlackTarget) -> Outcome {
    if code == "ratelimited" || code == "rate_limited" {
        return Outcome::RateLimited(None);
    }
    if TRANSIENT_CODES.contains(&code) {
        return Outcome::Transient(match status {
            Some(status) => format!("HTTP {status} `{code}`"),
            None => format!("`{code}`"),
        });
    }
    let code = target.scrub(code);
    let fix = fix_for(&code, body, target);
    Outcome::Fatal(SlackError::Rejected { endpoint: target.endpoint(), code, fix })
}

/// What the user should do about an error code.
fn fix_for(code: &str, body: &str, target: &SlackTarget) -> String {
    let channel = match target {
        SlackTarget::Bot { channel, .. } => channel.as_str(),
        SlackTarget::Webhook { .. } => "",
    };
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |name: &str| json.as_ref().and_then(|v| v.get(name)).and_then(|v| v.as_str()).map(str::to_string);
    let webhook = matches!(target, SlackTarget::Webhook { .. });
    match code {
        "channel_not_found" if webhook => {
            "the webhook's channel is gone: create a new incoming webhook for an existing channel and put its URL in \
             SLACK_WEBHOOK_URL"
                .into()
        }
        "channel_not_found" => format!(
            "the bot cannot see a channel `{channel}`: check the channel name or ID in the pipeline's Slack settings, \
             and for a private channel invite the bot first (`/invite @your-bot` in the channel)"
        ),
        "not_in_channel" => format!(
            "the bot is not a member of `{channel}`: invite it (`/invite @your-bot` in the channel), or add the \
             `chat:write.public` scope so it can post to public channels without joining"
        ),
        "missing_scope" => {
            let needed = field("needed").unwrap_or_else(|| "chat:write".into());
            let provided = field("provided").map(|p| format!(" (the token has: {p})")).unwrap_or_default();
            format!(
                "the token lacks the `{needed}` scope{provided}: add it under OAuth & Permissions in the Slack app's \
                 settings, reinstall the app to the workspace, and update SLACK_BOT_TOKEN with the new bot token"
            )
        }
        "invalid_auth"
        | "not_authed"
        | "token_revoked"
        | "token_expired"
        | "account_inactive"
        | "not_allowed_token_type" => {
            "Slack did not accept the token: check that SLACK_BOT_TOKEN holds the bot token (xoxb-…) of an app \
             installed in this workspace, and that the workflow passes it in `env`"
                .into()
        }
        "is_archived" | "channel_is_archived" => format!(
            "the channel{} is archived: unarchive it or post to another channel",
            if channel.is_empty() { String::new() } else { format!(" `{channel}`") }
        ),
        "no_service" | "no_active_hooks" | "invalid_token" | "action_prohibited" | "team_disabled" => {
            "the incoming webhook is disabled, removed or revoked: create a new incoming webhook in the Slack app's \
             settings and put its URL in SLACK_WEBHOOK_URL"
                .into()
        }
        "restricted_action" | "posting_to_general_channel_denied" | "ekm_access_denied" => {
            "the workspace's settings do not let the bot post in this channel: ask a Slack admin, or choose another \
             channel"
                .into()
        }
        "msg_too_long"
        | "no_text"
        | "invalid_blocks"
        | "invalid_blocks_format"
        | "invalid_payload"
        | "invalid_arguments"
        | "too_many_attachments" => {
            let detail = json
                .as_ref()
                .and_then(|v| v.get("errors").or_else(|| v.get("response_metadata")))
                .map(|v| format!(" (Slack says: {})", target.scrub(&v.to_string())))
                .unwrap_or_default();
            format!("Slack could not take promptloop's message{detail}: this is a bug in promptloop, please report it")
        }
        _ if webhook => {
            "see Slack's list of webhook errors at https://api.slack.com/messaging/webhooks#handling_errors".to_string()
        }
        _ => {
            "see Slack's description of this error at https://api.slack.com/methods/chat.postMessage#errors".to_string()
        }
    }
}

/// For an answer no Slack endpoint gives: the URL may point elsewhere.
fn check_url_hint(target: &SlackTarget) -> String {
    match target {
        SlackTarget::Bot { .. } => {
            format!(". Check the Slack API URL: it should be Slack's Web API, {DEFAULT_API_URL} unless GovSlack")
        }
        SlackTarget::Webhook { .. } => {
            ". Check SLACK_WEBHOOK_URL: it should be the URL Slack gave for the incoming webhook".to_string()
        }
    }
}

fn quoted_body(body: &str, target: &SlackTarget) -> String {
    let body = body.trim();
    if body.is_empty() { String::new() } else { format!(": `{}`", fit(&target.scrub(body), 200)) }
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_cuts_at_a_character_with_an_ellipsis() {
        assert_eq!(fit("abc", 3), "abc");
        assert_eq!(fit("abcd", 3), "ab…");
        assert_eq!(fit("ééééé", 4), "ééé…");
        // An emoji is two UTF-16 units: it is not split.
        assert_eq!(fit("a😀b", 3), "a…");
    }

    #[test]
    fn mrkdwn_escapes_user_text_and_never_cuts_an_entity() {
        assert_eq!(Mrkdwn::default().markup("*x* ").text("a<b>&c").render(100), "*x* a&lt;b&gt;&amp;c");
        let cut = Mrkdwn::default().markup("*x* ").text("ab&&&&").render(10);
        assert_eq!(cut, "*x* ab…");
        assert!(slack_len(&cut) <= 10);
    }

    #[test]
    fn link_targets_are_web_urls_with_control_characters_encoded() {
        assert_eq!(link_target("https://x.test/a?b=1&c=2").unwrap(), "https://x.test/a?b=1&amp;c=2");
        assert_eq!(link_target("https://x.test/a|b").unwrap(), "https://x.test/a%7Cb");
        assert!(link_target("javascript:alert(1)").is_none());
        assert!(link_target("not a url").is_none());
    }
}
