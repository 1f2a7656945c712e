//! An S3-compatible object store: every object under a prefix, in key order.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{BackoffConfig, ClientOptions, ObjectMeta, ObjectStore, RetryConfig};
use tokio::runtime::Handle;

use super::{SourceError, SourceUnit, Window, body_channel, decoded, pump};
use crate::config::S3Source;

/// How long a download may go without a byte before it counts as stalled.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) struct S3Objects {
    store: Arc<AmazonS3>,
    runtime: Handle,
    config: S3Source,
    since: Option<DateTime<Utc>>,
    /// Credential values, scrubbed from every error message.
    secrets: Vec<String>,
    /// Listed on the first call to `next`, so that opening does no I/O.
    objects: Option<std::vec::IntoIter<ObjectMeta>>,
    failed: bool,
}

impl S3Objects {
    pub(super) fn open(config: &S3Source, window: &Window, runtime: Handle) -> Result<Self> {
        let access_key = std::env::var(&config.access_key_env).ok().filter(|v| !v.trim().is_empty());
        let secret_key = std::env::var(&config.secret_key_env).ok().filter(|v| !v.trim().is_empty());
        let (access_key, secret_key) = match (access_key, secret_key) {
            (Some(access), Some(secret)) => (access, secret),
            (access, secret) => {
                let missing: Vec<&str> =
                    [(access.is_none(), &config.access_key_env), (secret.is_none(), &config.secret_key_env)]
                        .into_iter()
                        .filter(|(missing, _)| *missing)
                        .map(|(_, var)| var.as_str())
                        .collect();
                bail!(
                    "source: the S3 credentials are missing: set {} (or point source.access_key_env / source.secret_key_env at the variables that hold them)",
                    missing.join(" and ")
                );
            }
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_access_key_id(&access_key)
            .with_secret_access_key(&secret_key)
            // A few quick retries; the default keeps trying for minutes.
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: Duration::from_secs(30),
            })
            // The default 30 s limit covers the whole body and would cut large
            // objects; stalls are caught per chunk instead.
            .with_client_options(
                ClientOptions::new().with_timeout_disabled().with_connect_timeout(Duration::from_secs(10)),
            );
        let mut secrets = vec![access_key, secret_key];
        if let Some(token) = std::env::var(&config.session_token_env).ok().filter(|v| !v.trim().is_empty()) {
            builder = builder.with_token(&token);
            secrets.push(token);
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
        }
        let store = {
            let _in_runtime = runtime.enter();
            builder
                .build()
                .map_err(|error| anyhow!("source: cannot set up the S3 client: {}", scrub(&error, &secrets)))?
        };
        Ok(Self {
            store: Arc::new(store),
            runtime,
            config: config.clone(),
            since: window.since,
            secrets,
            objects: None,
            failed: false,
        })
    }

    fn describe(&self, error: &object_store::Error) -> String {
        let (text, code) = one_line(error, &self.secrets);
        let hint = match (error, code.as_deref()) {
            (_, Some("NoSuchBucket")) => {
                "the bucket does not exist; check source.bucket and source.endpoint".to_string()
            }
            (object_store::Error::NotFound { .. }, _) | (_, Some("NoSuchKey")) => {
                "the object is gone; check source.prefix, or run again if it was being rewritten".to_string()
            }
            _ => format!(
                "check source.bucket, source.endpoint and the credentials in ${} / ${}",
                self.config.access_key_env, self.config.secret_key_env
            ),
        };
        format!("{text}; {hint}")
    }

    /// The objects under the prefix, in key order. S3 prefixes are plain
    /// string prefixes (`logs/2024-` matches `logs/2024-05.jsonl`), while
    /// object_store lists by path segment: list the enclosing "directory" and
    /// filter.
    fn list(&self) -> Result<Vec<ObjectMeta>, SourceError> {
        let prefix = self.config.prefix.as_str();
        let directory = prefix.rfind('/').map(|slash| Path::from(&prefix[..slash]));
        let listing = self.store.list(directory.as_ref()).try_collect::<Vec<_>>();
        let mut objects = self.runtime.block_on(listing).map_err(|error| {
            SourceError::new(
                format!("s3://{}/{prefix}", self.config.bucket),
                format!("cannot list the objects: {}", self.describe(&error)),
            )
        })?;
        objects.retain(|object| {
            object.location.as_ref().starts_with(prefix) && self.since.is_none_or(|since| object.last_modified >= since)
        });
        objects.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        Ok(objects)
    }
}

impl Iterator for S3Objects {
    type Item = Result<SourceUnit, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.objects.is_none() {
            match self.list() {
                Ok(objects) => self.objects = Some(objects.into_iter()),
                Err(error) => {
                    self.failed = true;
                    return Some(Err(error));
                }
            }
        }
        let object = self.objects.as_mut()?.next()?;
        let name = format!("s3://{}/{}", self.config.bucket, object.location);
        let result = match self.runtime.block_on(self.store.get(&object.location)) {
            Ok(result) => result,
            Err(error) => {
                self.failed = true;
                return Some(Err(SourceError::new(name, format!("cannot read the object: {}", self.describe(&error)))));
            }
        };
        let (sender, body) = body_channel(&name);
        let secrets = self.secrets.clone();
        let stalled = format!("no data for {}s in the middle of the object; the store stalled", IDLE_TIMEOUT.as_secs());
        let broke = move |error: object_store::Error| {
            format!("the download broke off: {}; the object was not read whole", scrub(&error, &secrets))
        };
        self.runtime.spawn(pump(result.into_stream(), sender, IDLE_TIMEOUT, stalled, broke));
        Some(Ok(SourceUnit { name, reader: decoded(Box::new(body)) }))
    }
}

/// The error's text on one line with the credential values blanked (an S3
/// error body may quote the access key back), and the S3 error code if the
/// store sent one. An XML error body is shortened to its code and message.
fn one_line(error: &dyn std::fmt::Display, secrets: &[String]) -> (String, Option<String>) {
    let mut text = error.to_string();
    let mut code = None;
    if let Some(xml_at) = text.find("<?xml") {
        let xml = text.split_off(xml_at);
        code = xml_element(&xml, "Code");
        let message = xml_element(&xml, "Message");
        text = format!(
            "{}{}",
            text.trim_end_matches([' ', ':']),
            match (&code, &message) {
                (Some(code), Some(message)) => format!(": {code}: {message}"),
                (Some(code), None) => format!(": {code}"),
                _ => String::new(),
            }
        );
    }
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for secret in secrets {
        if !secret.is_empty() {
            text = text.replace(secret.as_str(), "***");
        }
    }
    (text, code)
}

fn scrub(error: &dyn std::fmt::Display, secrets: &[String]) -> String {
    one_line(error, secrets).0
}

fn xml_element(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..end].trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xml_error_body_becomes_its_code_and_message_without_the_key() {
        let error = "Error performing GET http://h/b in 7ms - Server returned non-2xx status code: 403 Forbidden: \
            <?xml version=\"1.0\"?>\n<Error><Code>InvalidAccessKeyId</Code>\n<Message>Key AKIA123 is unknown</Message>\
            <AWSAccessKeyId>AKIA123</AWSAccessKeyId></Error>";
        let (text, code) = one_line(&error, &["AKIA123".to_string()]);
        assert_eq!(code.as_deref(), Some("InvalidAccessKeyId"));
        assert_eq!(
            text,
            "Error performing GET http://h/b in 7ms - Server returned non-2xx status code: 403 Forbidden: \
             InvalidAccessKeyId: Key *** is unknown"
        );
    }
}
