//! Where log lines come from: local files and globs, an HTTP endpoint that
//! answers with JSONL pages, or an S3-compatible object store. A source yields
//! [`SourceUnit`]s (one file, one page, one object) whose bytes [`Lines`]
//! splits into lines. Bad input inside a unit is a [`LineEvent::Bad`] and the
//! pull goes on; a source that fails is a [`SourceError`] and the pull stops.

mod files;
mod http;
mod lines;
mod s3;

use std::fmt;
use std::io::{self, Chain, Cursor, Read};

use anyhow::Result;
use chrono::{DateTime, Utc};
use flate2::read::MultiGzDecoder;
use tokio::runtime::Handle;
use tokio::sync::mpsc;

pub use lines::{LineEvent, LineProblem, Lines};

use crate::clock::Sleeper;
use crate::config::{SourceConfig, SourceLocation};

/// The time range one pull reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Records before this were read by an earlier pull; `None` reads everything.
    pub since: Option<DateTime<Utc>>,
    pub until: DateTime<Utc>,
}

/// One file, one HTTP page or one object: a name for reports and its bytes,
/// already decompressed when they are gzip.
pub struct SourceUnit {
    /// A path, a URL without its query string and credentials, or `s3://bucket/key`.
    pub name: String,
    pub reader: Box<dyn Read + Send>,
}

impl fmt::Debug for SourceUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceUnit").field("name", &self.name).finish_non_exhaustive()
    }
}

/// The source itself failed: a connection reset, an HTTP error status, an S3
/// error, a file that cannot be read. The pull stops; the message names the
/// unit and what to check, never a credential.
#[derive(Debug, thiserror::Error)]
#[error("{unit}: {message}")]
pub struct SourceError {
    unit: String,
    message: String,
}

impl SourceError {
    pub(crate) fn new(unit: impl Into<String>, message: impl Into<String>) -> Self {
        Self { unit: unit.into(), message: message.into() }
    }

    /// The file, URL or object that failed.
    pub fn unit(&self) -> &str {
        &self.unit
    }

    /// What went wrong and what to check, without the unit's name.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The units of one source, produced lazily: the next file is opened, the
/// next page requested, the next object fetched only when asked for.
pub struct Units {
    inner: UnitsInner,
}

enum UnitsInner {
    Files(files::FileUnits),
    Http(Box<http::HttpPages>),
    S3(Box<s3::S3Objects>),
}

impl Iterator for Units {
    type Item = Result<SourceUnit>;

    fn next(&mut self) -> Option<Self::Item> {
        let next = match &mut self.inner {
            UnitsInner::Files(files) => files.next(),
            UnitsInner::Http(pages) => pages.next(),
            UnitsInner::S3(objects) => objects.next(),
        };
        next.map(|unit| unit.map_err(anyhow::Error::from))
    }
}

/// Opens the configured source for `window`.
///
/// Call it from a blocking thread (e.g. `tokio::task::spawn_blocking`): the
/// HTTP and S3 clients run on `runtime`, and their bytes reach the units'
/// readers through a bounded channel, so memory stays bounded whatever the
/// size of a page or an object.
/// An HTTP source waits between tries through `sleeper`.
pub fn open(config: &SourceConfig, window: &Window, runtime: Handle, sleeper: Sleeper) -> Result<Units> {
    let inner = match &config.location {
        SourceLocation::Files { patterns } => UnitsInner::Files(files::FileUnits::open(patterns)?),
        SourceLocation::Http(http) => {
            UnitsInner::Http(Box::new(http::HttpPages::open(http, window, runtime, sleeper)?))
        }
        SourceLocation::S3(s3) => UnitsInner::S3(Box::new(s3::S3Objects::open(s3, window, runtime)?)),
    };
    Ok(Units { inner })
}

/// Marks an I/O error as a failure of the source (the file or the connection),
/// not of the bytes it delivered, so that [`Lines`] can still tell the two
/// apart after the error has passed through the gzip decoder.
#[derive(Debug)]
struct SourceFailure {
    unit: String,
    message: String,
}

impl fmt::Display for SourceFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.unit, self.message)
    }
}

impl std::error::Error for SourceFailure {}

fn source_failure(unit: &str, message: impl Into<String>) -> io::Error {
    io::Error::other(SourceFailure { unit: unit.to_string(), message: message.into() })
}

/// The [`SourceError`] an I/O error stands for, when the source itself failed.
fn as_source_error(error: &io::Error) -> Option<SourceError> {
    let failure = error.get_ref()?.downcast_ref::<SourceFailure>()?;
    Some(SourceError::new(failure.unit.clone(), failure.message.clone()))
}

/// The bytes of a unit, gunzipped when they start with the gzip magic bytes
/// (whatever the name says). Which one is decided on the first read.
enum Decoded {
    Sniffing(Option<Box<dyn Read + Send>>),
    Plain(Sniffed),
    Gzip(Box<MultiGzDecoder<Sniffed>>),
}

/// The bytes read to sniff the format, then the rest.
type Sniffed = Chain<Cursor<Vec<u8>>, Box<dyn Read + Send>>;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

fn decoded(raw: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
    Box::new(Decoded::Sniffing(Some(raw)))
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self {
                Decoded::Plain(reader) => return reader.read(buf),
                Decoded::Gzip(reader) => return reader.read(buf),
                Decoded::Sniffing(raw) => {
                    let Some(mut raw) = raw.take() else { return Ok(0) };
                    let mut head = Vec::with_capacity(GZIP_MAGIC.len());
                    if let Err(error) = (&mut raw).take(GZIP_MAGIC.len() as u64).read_to_end(&mut head) {
                        *self = Decoded::Sniffing(Some(raw));
                        return Err(error);
                    }
                    let is_gzip = head == GZIP_MAGIC;
                    let bytes = Cursor::new(head).chain(raw);
                    *self = if is_gzip {
                        Decoded::Gzip(Box::new(MultiGzDecoder::new(bytes)))
                    } else {
                        Decoded::Plain(bytes)
                    };
                }
            }
        }
    }
}

/// What the async side of a [`ChannelBody`] sends.
enum BodyMessage<B> {
    Chunk(B),
    Failed(String),
    /// The body is complete. A channel that closes without it was cut short.
    End,
}

/// Chunks in flight between the async client and the blocking reader: the
/// memory a unit's body can take is this many chunks.
const CHANNEL_CHUNKS: usize = 16;

/// The blocking end of a body streamed by an async client.
struct ChannelBody<B> {
    unit: String,
    receiver: mpsc::Receiver<BodyMessage<B>>,
    chunk: Option<B>,
    offset: usize,
    ended: bool,
}

/// The async end: `send` returns false once the reader is gone, so the
/// producer can stop downloading.
struct BodySender<B> {
    sender: mpsc::Sender<BodyMessage<B>>,
}

impl<B> BodySender<B> {
    async fn send(&self, chunk: B) -> bool {
        self.sender.send(BodyMessage::Chunk(chunk)).await.is_ok()
    }

    async fn fail(self, message: String) {
        let _ = self.sender.send(BodyMessage::Failed(message)).await;
    }

    async fn end(self) {
        let _ = self.sender.send(BodyMessage::End).await;
    }
}

/// Feeds a body's chunks to its reader until the body ends. A gap longer than
/// `idle` fails the unit with `stalled`; a transport error with `broke(error)`.
async fn pump<B, E>(
    mut chunks: impl futures::Stream<Item = Result<B, E>> + Unpin,
    sender: BodySender<B>,
    idle: std::time::Duration,
    stalled: String,
    broke: impl Fn(E) -> String,
) {
    use futures::StreamExt;
    loop {
        match tokio::time::timeout(idle, chunks.next()).await {
            Err(_) => return sender.fail(stalled).await,
            Ok(Some(Err(error))) => return sender.fail(broke(error)).await,
            Ok(None) => return sender.end().await,
            Ok(Some(Ok(chunk))) => {
                if !sender.send(chunk).await {
                    return;
                }
            }
        }
    }
}

fn body_channel<B>(unit: &str) -> (BodySender<B>, ChannelBody<B>) {
    let (sender, receiver) = mpsc::channel(CHANNEL_CHUNKS);
    let body = ChannelBody { unit: unit.to_string(), receiver, chunk: None, offset: 0, ended: false };
    (BodySender { sender }, body)
}

impl<B: AsRef<[u8]>> Read for ChannelBody<B> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(chunk) = &self.chunk {
                let rest = &chunk.as_ref()[self.offset..];
                if !rest.is_empty() {
                    let n = rest.len().min(buf.len());
                    buf[..n].copy_from_slice(&rest[..n]);
                    self.offset += n;
                    return Ok(n);
                }
                self.chunk = None;
            }
            if self.ended || buf.is_empty() {
                return Ok(0);
            }
            match self.receiver.blocking_recv() {
                Some(BodyMessage::Chunk(chunk)) => {
                    self.chunk = Some(chunk);
                    self.offset = 0;
                }
                Some(BodyMessage::End) => self.ended = true,
                Some(BodyMessage::Failed(message)) => return Err(source_failure(&self.unit, message)),
                None => {
                    return Err(source_failure(&self.unit, "the download stopped before the body was complete"));
                }
            }
        }
    }
}
