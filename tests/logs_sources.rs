//! Log sources: local files and globs (plain and gzip), an HTTP endpoint with
//! paging (a real server on 127.0.0.1), and an S3-compatible store (moto's
//! server, installed by scripts/test.sh). Bad input is reported per line and
//! the pull goes on; a failing source ends it with a `SourceError`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use object_store::ObjectStore;
use promptloop::clock::Sleeper;
use promptloop::config::{FormatConfig, HttpSource, LogFormat, Paging, S3Source, SourceConfig, SourceLocation};
use promptloop::logs::sources::{self, LineEvent, LineProblem, Lines, SourceError, Window};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;

// ---------------------------------------------------------------------------
// Memory: a per-thread count of live heap bytes, to show that a 50 MB line is
// never held whole.

struct CountingAllocator;

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn note_allocation(delta: isize) {
    let _ = LIVE_BYTES.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            note_allocation(layout.size() as isize);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        unsafe { System.dealloc(pointer, layout) };
        note_allocation(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            note_allocation(new_size as isize - layout.size() as isize);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `f` and returns how far this thread's live heap rose above where it started.
fn peak_heap_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE_BYTES.with(Cell::get);
    PEAK_BYTES.with(|peak| peak.set(start));
    let result = f();
    let peak = PEAK_BYTES.with(Cell::get);
    (result, (peak - start).max(0) as usize)
}

// ---------------------------------------------------------------------------
// Reading a source whole.

const MIB: usize = 1 << 20;

fn config(location: SourceLocation) -> SourceConfig {
    SourceConfig {
        location,
        format: FormatConfig {
            format: LogFormat::Native,
            input_field: "message".into(),
            output_fields: vec!["queue".into()],
        },
        max_line_bytes: MIB,
    }
}

fn files(patterns: &[PathBuf]) -> SourceConfig {
    config(SourceLocation::Files { patterns: patterns.iter().map(|p| p.display().to_string()).collect() })
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

fn window(since: Option<&str>, until: &str) -> Window {
    Window { since: since.map(at), until: at(until) }
}

fn all_time() -> Window {
    Window { since: None, until: Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap() }
}

/// What a pull gave: every unit's name and events, up to the error that ended it.
#[derive(Debug, Default)]
struct Pull {
    units: Vec<(String, Vec<LineEvent>)>,
    error: Option<anyhow::Error>,
    /// What the source asked to wait between tries.
    waits: Vec<Duration>,
}

impl Pull {
    fn names(&self) -> Vec<String> {
        self.units.iter().map(|(name, _)| name.clone()).collect()
    }

    /// The text of every good line, in order.
    fn texts(&self) -> Vec<String> {
        self.units
            .iter()
            .flat_map(|(_, events)| events)
            .filter_map(|event| match event {
                LineEvent::Line { text, .. } => Some(text.clone()),
                LineEvent::Bad { .. } => None,
            })
            .collect()
    }

    fn error_text(&self) -> String {
        format!("{:#}", self.error.as_ref().expect("the pull should have failed"))
    }

    fn source_error(&self) -> &SourceError {
        self.error.as_ref().expect("the pull should have failed").downcast_ref::<SourceError>().expect("a SourceError")
    }
}

/// Pulls everything, as the lead's pull does: from a blocking thread, with
/// the async clients on `runtime`.
/// The waits between tries are recorded in `Pull::waits`, not waited.
fn pull(config: &SourceConfig, window: &Window, runtime: &Runtime) -> Pull {
    let waits = Arc::new(Mutex::new(Vec::new()));
    let recorded = waits.clone();
    let sleeper = Sleeper::new(move |wait| {
        recorded.lock().unwrap().push(wait);
        std::future::ready(())
    });
    let mut pulled = pull_with(config, window, runtime, sleeper);
    pulled.waits = waits.lock().unwrap().clone();
    pulled
}

fn pull_with(config: &SourceConfig, window: &Window, runtime: &Runtime, sleeper: Sleeper) -> Pull {
    let mut pulled = Pull::default();
    let units = match sources::open(config, window, runtime.handle().clone(), sleeper) {
        Ok(units) => units,
        Err(error) => {
            pulled.error = Some(error);
            return pulled;
        }
    };
    for unit in units {
        let unit = match unit {
            Ok(unit) => unit,
            Err(error) => {
                pulled.error = Some(error);
                return pulled;
            }
        };
        let mut events = Vec::new();
        for event in Lines::new(unit.reader, config.max_line_bytes) {
            match event {
                Ok(event) => events.push(event),
                Err(error) => {
                    pulled.units.push((unit.name, events));
                    pulled.error = Some(error.into());
                    return pulled;
                }
            }
        }
        pulled.units.push((unit.name, events));
    }
    pulled
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn line(number: u64, text: &str) -> LineEvent {
    LineEvent::Line { number, text: text.to_string() }
}

fn bad(number: u64, problem: LineProblem) -> LineEvent {
    LineEvent::Bad { number, problem }
}

/// Lines that compress poorly, so that cutting the compressed bytes in half
/// cuts the text in the middle.
fn varied_lines(count: usize) -> String {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (1..=count)
        .map(|i| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            format!("{{\"id\":\"r{i}\",\"noise\":\"{state:016x}{:016x}\"}}\n", state.rotate_left(17))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Files.

#[test]
fn files_are_read_in_sorted_order_plain_gzip_and_multi_member_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("b.jsonl"), "{\"n\":\"b1\"}\n{\"n\":\"b2\"}\n").unwrap();
    std::fs::write(d.join("a.jsonl.gz"), gzip(b"{\"n\":\"a1\"}\n")).unwrap();
    // Gzip without a .gz name: told by its magic bytes.
    std::fs::write(d.join("c.log"), gzip(b"{\"n\":\"c1\"}\n")).unwrap();
    // Two gzip members back to back, as `cat x.gz y.gz` makes.
    let mut members = gzip(b"{\"n\":\"d1\"}\n");
    members.extend(gzip(b"{\"n\":\"d2\"}\n"));
    std::fs::write(d.join("d.jsonl.gz"), members).unwrap();
    std::fs::write(d.join("ignored.txt"), "not matched").unwrap();
    std::fs::create_dir(d.join("dir.jsonl")).unwrap();

    // a.jsonl.gz is matched twice; the directory matched by the glob is not a file.
    let config = files(&[d.join("*.jsonl*"), d.join("c.log"), d.join("a.jsonl.gz")]);
    let pulled = pull(&config, &all_time(), &runtime());

    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    let expected_names: Vec<String> =
        ["a.jsonl.gz", "b.jsonl", "c.log", "d.jsonl.gz"].iter().map(|f| d.join(f).display().to_string()).collect();
    assert_eq!(pulled.names(), expected_names);
    assert_eq!(pulled.texts(), ["a1", "b1", "b2", "c1", "d1", "d2"].map(|n| format!("{{\"n\":\"{n}\"}}")).to_vec());
}

#[test]
fn a_double_star_over_link_loops_reads_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("week/a")).unwrap();
    std::fs::write(d.join("week/x.jsonl"), "{\"n\":\"x\"}\n").unwrap();
    std::fs::write(d.join("week/a/y.jsonl"), "{\"n\":\"y\"}\n").unwrap();
    // A link to its own directory, two links that point at each other's
    // parents, and a second name for a file.
    std::os::unix::fs::symlink(d.join("week"), d.join("week/self")).unwrap();
    std::os::unix::fs::symlink(d.join("week"), d.join("week/a/up")).unwrap();
    std::os::unix::fs::symlink(d.join("week/a"), d.join("week/down")).unwrap();
    std::os::unix::fs::symlink(d.join("week/x.jsonl"), d.join("week/a/x-again.jsonl")).unwrap();

    let pulled = pull(&files(&[d.join("week/**/*.jsonl")]), &all_time(), &runtime());

    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    // x.jsonl is read once, under its first name in sorted order.
    let names: Vec<String> =
        ["week/a/x-again.jsonl", "week/a/y.jsonl"].iter().map(|f| d.join(f).display().to_string()).collect();
    assert_eq!(pulled.names(), names);
    assert_eq!(pulled.texts(), ["{\"n\":\"x\"}", "{\"n\":\"y\"}"]);
}

#[test]
fn a_star_does_not_cross_a_slash_and_a_pattern_reaches_only_its_depth() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("logs/mon/deep")).unwrap();
    std::fs::write(d.join("logs/mon/a.jsonl"), "{\"n\":\"a\"}\n").unwrap();
    std::fs::write(d.join("logs/mon/deep/b.jsonl"), "{\"n\":\"b\"}\n").unwrap();

    let pulled = pull(&files(&[d.join("logs/*/*.jsonl")]), &all_time(), &runtime());
    assert_eq!(pulled.names(), [d.join("logs/mon/a.jsonl").display().to_string()]);
    let pulled = pull(&files(&[d.join("logs/**/b.jsonl")]), &all_time(), &runtime());
    assert_eq!(pulled.names(), [d.join("logs/mon/deep/b.jsonl").display().to_string()]);
    let pulled = pull(&files(&[d.join("logs/*.jsonl")]), &all_time(), &runtime());
    assert!(pulled.error_text().contains("matches no file"), "{}", pulled.error_text());
}

#[test]
fn a_truncated_gzip_is_reported_at_the_line_it_cut_and_the_next_file_is_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let text = varied_lines(2000);
    let compressed = gzip(text.as_bytes());
    std::fs::write(dir.path().join("1-cut.jsonl.gz"), &compressed[..compressed.len() / 2]).unwrap();
    // Only the 8-byte trailer is missing: every line decodes, the stream is still broken.
    std::fs::write(dir.path().join("2-no-trailer.jsonl.gz"), &compressed[..compressed.len() - 8]).unwrap();
    std::fs::write(dir.path().join("3-whole.jsonl"), "{\"n\":\"after\"}\n").unwrap();

    let pulled = pull(&files(&[dir.path().join("*")]), &all_time(), &runtime());
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    assert_eq!(pulled.units.len(), 3);
    let expected: Vec<&str> = text.lines().collect();

    let (_, cut) = &pulled.units[0];
    let (last, good) = cut.split_last().unwrap();
    assert!(
        good.len() > 100 && good.len() < 1900,
        "half the compressed bytes give about half the lines, got {}",
        good.len()
    );
    for (i, event) in good.iter().enumerate() {
        assert_eq!(event, &line(i as u64 + 1, expected[i]));
    }
    match last {
        LineEvent::Bad { number, problem: LineProblem::Truncated { detail } } => {
            assert_eq!(*number, good.len() as u64 + 1);
            assert!(detail.contains("compressed"), "{detail}");
        }
        other => panic!("expected Truncated, got {other:?}"),
    }

    let (_, no_trailer) = &pulled.units[1];
    assert_eq!(no_trailer.len(), 2001);
    assert_eq!(no_trailer[1999], line(2000, expected[1999]));
    assert!(matches!(no_trailer[2000], LineEvent::Bad { number: 2001, problem: LineProblem::Truncated { .. } }));

    assert_eq!(pulled.units[2].1, vec![line(1, "{\"n\":\"after\"}")]);
}

#[test]
fn invalid_utf8_crlf_blank_lines_and_a_byte_order_mark() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.jsonl");
    std::fs::write(&path, b"\xEF\xBB\xBF{\"a\":1}\r\n\r\n{\"bad\":\"\xFF\xFE\"}\r\n   \n{\"b\":2}\r\n{\"c\":3}")
        .unwrap();

    let pulled = pull(&files(&[path]), &all_time(), &runtime());
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    assert_eq!(
        pulled.units[0].1,
        vec![line(1, "{\"a\":1}"), bad(3, LineProblem::InvalidUtf8), line(5, "{\"b\":2}"), line(6, "{\"c\":3}"),]
    );
}

#[test]
fn a_50_mb_line_is_skipped_without_being_held_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let long_line = 50 * MIB;
    let mut content = Vec::with_capacity(long_line + 100);
    content.extend_from_slice(b"{\"n\":1}\n");
    content.resize(content.len() + long_line, b'x');
    content.extend_from_slice(b"\r\n{\"n\":3}\n");
    std::fs::write(dir.path().join("a-plain.jsonl"), &content).unwrap();
    std::fs::write(dir.path().join("b-gzip.jsonl.gz"), gzip(&content)).unwrap();
    drop(content);

    let config = files(&[dir.path().join("*")]);
    let runtime = runtime();
    let (pulled, growth) = peak_heap_growth(|| pull(&config, &all_time(), &runtime));
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    let expected =
        vec![line(1, "{\"n\":1}"), bad(2, LineProblem::TooLong { bytes: long_line as u64 }), line(3, "{\"n\":3}")];
    assert_eq!(pulled.units[0].1, expected);
    assert_eq!(pulled.units[1].1, expected);
    // max_line_bytes (1 MiB) + read buffers + the gzip state; the line itself is 50 MiB.
    assert!(growth < 4 * MIB, "reading rose the heap by {growth} bytes");
}

#[test]
fn line_length_limit_is_exact_and_ignores_the_line_ending() {
    let limit = 1024;
    let exact = "y".repeat(limit);
    let over = "z".repeat(limit + 1);
    let input = format!("{exact}\r\n{over}\n{exact}");
    let events: Vec<LineEvent> = Lines::new(input.as_bytes(), limit).map(Result::unwrap).collect();
    assert_eq!(
        events,
        vec![line(1, &exact), bad(2, LineProblem::TooLong { bytes: limit as u64 + 1 }), line(3, &exact)]
    );
}

#[test]
fn a_pattern_that_matches_nothing_or_a_missing_path_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.jsonl"), "{}\n").unwrap();
    let runtime = runtime();

    let pattern = dir.path().join("*.csv");
    let pulled = pull(&files(&[dir.path().join("a.jsonl"), pattern.clone()]), &all_time(), &runtime);
    let error = pulled.error_text();
    assert!(error.contains(&pattern.display().to_string()) && error.contains("matches no file"), "{error}");

    let missing = dir.path().join("missing.jsonl");
    let pulled = pull(&files(std::slice::from_ref(&missing)), &all_time(), &runtime);
    let error = pulled.error_text();
    assert!(error.contains(&missing.display().to_string()) && error.contains("does not exist"), "{error}");
}

// ---------------------------------------------------------------------------
// HTTP: a small HTTP/1.1 server that records each request and answers from a script.

#[derive(Debug, Clone)]
struct Request {
    path: String,
    query: Vec<(String, String)>,
    authorization: Option<String>,
}

impl Request {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

enum Reply {
    Ok {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    Status(u16),
    /// An error status asking the client to come back later.
    RetryAfter(u16, String),
    /// Claims more bytes than it sends, then closes the connection.
    CutShort {
        body: Vec<u8>,
        claimed: usize,
    },
}

fn ok(body: &str) -> Reply {
    Reply::Ok { headers: Vec::new(), body: body.as_bytes().to_vec() }
}

fn ok_with(header: &str, value: &str, body: &str) -> Reply {
    Reply::Ok { headers: vec![(header.to_string(), value.to_string())], body: body.as_bytes().to_vec() }
}

type Script = dyn Fn(&Request, usize) -> Reply + Send + Sync;

struct Server {
    base: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

/// Starts the server on 127.0.0.1 with `script(request, index)` answering.
fn serve(runtime: &Runtime, script: impl Fn(&Request, usize) -> Reply + Send + Sync + 'static) -> Server {
    let script: Arc<Script> = Arc::new(script);
    let requests = Arc::new(Mutex::new(Vec::new()));
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let recorded = requests.clone();
    runtime.spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let script = script.clone();
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8(head).unwrap();
                let target = head.lines().next().unwrap().split(' ').nth(1).unwrap().to_string();
                let url = reqwest::Url::parse(&format!("http://server{target}")).unwrap();
                let authorization = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("authorization").then(|| value.trim().to_string())
                });
                let request = Request {
                    path: url.path().to_string(),
                    query: url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect(),
                    authorization,
                };
                let index = {
                    let mut recorded = recorded.lock().unwrap();
                    recorded.push(request.clone());
                    recorded.len() - 1
                };
                let (status, headers, body, claimed) = match script(&request, index) {
                    Reply::Ok { headers, body } => {
                        let len = body.len();
                        (200, headers, body, len)
                    }
                    Reply::Status(status) => (status, Vec::new(), b"{\"error\":\"no\"}".to_vec(), 14),
                    Reply::RetryAfter(status, wait) => {
                        (status, vec![("Retry-After".to_string(), wait)], b"{\"error\":\"no\"}".to_vec(), 14)
                    }
                    Reply::CutShort { body, claimed } => (200, Vec::new(), body, claimed),
                };
                let mut response =
                    format!("HTTP/1.1 {status} Whatever\r\nContent-Length: {claimed}\r\nConnection: close\r\n");
                for (name, value) in headers {
                    response.push_str(&format!("{name}: {value}\r\n"));
                }
                response.push_str("\r\n");
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.flush().await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Server { base, requests }
}

fn http(url: &str, token_env: Option<&str>, paging: Paging) -> SourceConfig {
    config(SourceLocation::Http(HttpSource {
        url: url.to_string(),
        token_env: token_env.map(str::to_string),
        since_param: Some("since".into()),
        until_param: Some("until".into()),
        paging,
        timeout_secs: 10.0,
    }))
}

/// Sets a variable for this test (each test uses its own name, before any thread reads the environment).
fn set_env(name: &str, value: &str) {
    // SAFETY: set before this test starts its runtime; no other code reads this variable.
    unsafe { std::env::set_var(name, value) };
}

const TOKEN: &str = "tok-7f3a9c-never-in-messages";

#[test]
fn http_sends_the_bearer_token_and_the_window() {
    set_env("PL_TEST_TOKEN_BEARER", TOKEN);
    let runtime = runtime();
    let server = serve(&runtime, |request, _| {
        if request.authorization.as_deref() == Some(&format!("Bearer {TOKEN}")) {
            ok("{\"n\":1}\n{\"n\":2}\n")
        } else {
            Reply::Status(401)
        }
    });
    let config = http(&format!("{}/v1/logs?limit=500", server.base), Some("PL_TEST_TOKEN_BEARER"), Paging::None);

    let pulled = pull(&config, &window(Some("2024-05-01T00:00:00Z"), "2024-05-08T12:30:00.25Z"), &runtime);
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    assert_eq!(pulled.texts(), ["{\"n\":1}", "{\"n\":2}"]);
    assert_eq!(pulled.names(), [format!("{}/v1/logs", server.base)]);
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/v1/logs");
    assert_eq!(requests[0].param("limit"), Some("500"));
    assert_eq!(requests[0].param("since"), Some("2024-05-01T00:00:00.000Z"));
    assert_eq!(requests[0].param("until"), Some("2024-05-08T12:30:00.250Z"));

    // The first pull has no lower bound: no since parameter at all.
    let pulled = pull(&config, &window(None, "2024-05-08T00:00:00Z"), &runtime);
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    let requests = server.requests();
    assert_eq!(requests[1].param("since"), None);
    assert_eq!(requests[1].param("until"), Some("2024-05-08T00:00:00.000Z"));
}

#[test]
fn http_token_problems_name_the_variable_never_the_token() {
    let runtime = runtime();
    let server = serve(&runtime, |_, _| Reply::Status(401));

    let config = http(&format!("{}/logs", server.base), Some("PL_TEST_TOKEN_UNSET"), Paging::None);
    let error = pull(&config, &all_time(), &runtime).error_text();
    assert!(error.contains("PL_TEST_TOKEN_UNSET") && error.contains("not set"), "{error}");
    assert!(server.requests().is_empty(), "nothing is requested without the token");

    set_env("PL_TEST_TOKEN_EMPTY", "  ");
    let config = http(&format!("{}/logs", server.base), Some("PL_TEST_TOKEN_EMPTY"), Paging::None);
    let error = pull(&config, &all_time(), &runtime).error_text();
    assert!(error.contains("PL_TEST_TOKEN_EMPTY"), "{error}");

    set_env("PL_TEST_TOKEN_REFUSED", TOKEN);
    let config = http(&format!("{}/logs", server.base), Some("PL_TEST_TOKEN_REFUSED"), Paging::None);
    let pulled = pull(&config, &all_time(), &runtime);
    let error = pulled.error_text();
    assert!(error.contains("refused the token in $PL_TEST_TOKEN_REFUSED") && error.contains("401"), "{error}");
    assert!(!error.contains(TOKEN), "{error}");
    assert_eq!(pulled.source_error().unit(), format!("{}/logs", server.base));
    assert_eq!(server.requests().len(), 1, "a refused token is not retried");
}

#[test]
fn http_retries_a_server_error_before_the_body_then_gives_up_with_the_status() {
    let runtime = runtime();
    let server = serve(&runtime, |request, index| match (request.path.as_str(), index) {
        ("/flaky", 0) => Reply::Status(500),
        ("/flaky", _) => ok("{\"n\":1}\n"),
        _ => Reply::Status(503),
    });

    let pulled = pull(&http(&format!("{}/flaky", server.base), None, Paging::None), &all_time(), &runtime);
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    assert_eq!(pulled.texts(), ["{\"n\":1}"]);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(pulled.waits, [Duration::from_millis(250)]);

    let pulled = pull(&http(&format!("{}/down", server.base), None, Paging::None), &all_time(), &runtime);
    let error = pulled.error_text();
    assert!(error.contains("503") && error.contains("after 3 attempts"), "{error}");
    assert_eq!(server.requests().len(), 5);
    assert_eq!(pulled.waits, [Duration::from_millis(250), Duration::from_millis(500)], "backoff doubles");
}

#[test]
fn http_waits_as_long_as_retry_after_asks_within_reason() {
    let runtime = runtime();
    let server = serve(&runtime, |request, index| match (request.path.as_str(), index) {
        ("/limited", 0) => Reply::RetryAfter(429, "0".into()),
        ("/limited", _) => ok("{\"n\":1}\n"),
        _ => Reply::RetryAfter(503, "3600".into()),
    });
    let pulled = pull(&http(&format!("{}/limited", server.base), None, Paging::None), &all_time(), &runtime);
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(pulled.waits, [Duration::ZERO], "Retry-After: 0 is taken as asked");

    // An hour's wait ends the pull at once instead of holding the run.
    let pulled = pull(&http(&format!("{}/maintenance", server.base), None, Paging::None), &all_time(), &runtime);
    let error = pulled.error_text();
    assert!(error.contains("asks to wait 3600s (Retry-After); pull again later"), "{error}");
    assert_eq!(server.requests().len(), 3, "not retried");
}

#[test]
fn http_other_statuses_are_errors_with_the_status() {
    let runtime = runtime();
    let server = serve(&runtime, |_, _| Reply::Status(404));
    let pulled = pull(&http(&format!("{}/nope", server.base), None, Paging::None), &all_time(), &runtime);
    let error = pulled.error_text();
    assert!(error.contains("404") && error.contains("source.url"), "{error}");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn http_follows_link_headers_over_three_pages() {
    let runtime = runtime();
    let base = Arc::new(Mutex::new(String::new()));
    let absolute = base.clone();
    let server = serve(&runtime, move |request, _| match request.param("page") {
        // A relative next link, then an absolute one among others.
        None => ok_with("Link", "</logs?page=2&since=kept>; rel=\"next\"", "{\"p\":1}\n"),
        Some("2") => {
            let next = format!("<{}/logs?page=3>; rel=\"next\", </logs>; rel=\"prev first\"", absolute.lock().unwrap());
            ok_with("Link", &next, "{\"p\":2}\n")
        }
        Some(_) => ok_with("Link", "</logs>; rel=\"first\"", "{\"p\":3}\n"),
    });
    *base.lock().unwrap() = server.base.clone();

    let pulled = pull(&http(&format!("{}/logs", server.base), None, Paging::Link), &all_time(), &runtime);
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    assert_eq!(pulled.texts(), ["{\"p\":1}", "{\"p\":2}", "{\"p\":3}"]);
    assert_eq!(pulled.names()[1], format!("{}/logs (page 2)", server.base));
    let pages: Vec<Option<String>> = server.requests().iter().map(|r| r.param("page").map(str::to_string)).collect();
    assert_eq!(pages, [None, Some("2".into()), Some("3".into())]);
}

#[test]
fn http_follows_a_cursor_header_keeping_the_window() {
    let runtime = runtime();
    let server = serve(&runtime, |request, _| match request.param("after") {
        None => ok_with("X-Next-Cursor", "c2", "{\"p\":1}\n"),
        Some("c2") => ok_with("X-Next-Cursor", "c3/+=", "{\"p\":2}\n"),
        Some(_) => ok_with("X-Next-Cursor", "", "{\"p\":3}\n"),
    });
    let paging = Paging::Cursor { param: "after".into(), header: "x-next-cursor".into() };

    let pulled = pull(
        &http(&format!("{}/logs", server.base), None, paging),
        &window(Some("2024-01-01T00:00:00Z"), "2024-02-01T00:00:00Z"),
        &runtime,
    );
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    assert_eq!(pulled.texts(), ["{\"p\":1}", "{\"p\":2}", "{\"p\":3}"]);
    let requests = server.requests();
    let cursors: Vec<Option<&str>> = requests.iter().map(|r| r.param("after")).collect();
    assert_eq!(cursors, [None, Some("c2"), Some("c3/+=")]);
    for request in &requests {
        assert_eq!(request.param("since"), Some("2024-01-01T00:00:00.000Z"));
        assert_eq!(request.param("until"), Some("2024-02-01T00:00:00.000Z"));
    }
}

#[test]
fn http_paging_that_loops_is_an_error() {
    let runtime = runtime();
    let server = serve(&runtime, |request, _| match request.param("page") {
        None => ok_with("Link", "</logs?page=2>; rel=next", "{\"p\":1}\n"),
        _ => ok_with("Link", "</logs?page=2>; rel=next", "{\"p\":2}\n"),
    });
    let pulled = pull(&http(&format!("{}/logs", server.base), None, Paging::Link), &all_time(), &runtime);
    assert_eq!(pulled.texts(), ["{\"p\":1}", "{\"p\":2}"]);
    let error = pulled.error_text();
    assert!(error.contains("loops"), "{error}");
    assert_eq!(server.requests().len(), 2);

    let server = serve(&runtime, |_, _| ok_with("x-next-cursor", "same", "{}\n"));
    let paging = Paging::Cursor { param: "cursor".into(), header: "x-next-cursor".into() };
    let pulled = pull(&http(&format!("{}/logs", server.base), None, paging), &all_time(), &runtime);
    assert!(pulled.error_text().contains("loops"), "{}", pulled.error_text());
    assert_eq!(server.requests().len(), 2);
}

#[test]
fn http_a_body_cut_mid_stream_stops_the_pull_even_inside_gzip() {
    set_env("PL_TEST_TOKEN_CUT", TOKEN);
    let runtime = runtime();
    let text = varied_lines(3000);
    let compressed = gzip(text.as_bytes());
    let plain = text.clone().into_bytes();
    let server = serve(&runtime, move |request, _| match request.path.as_str() {
        "/plain" => Reply::CutShort { body: plain[..plain.len() / 2].to_vec(), claimed: plain.len() },
        "/gzip" => Reply::CutShort { body: compressed[..compressed.len() / 2].to_vec(), claimed: compressed.len() },
        _ => Reply::Status(404),
    });

    for path in ["/plain", "/gzip"] {
        let config = http(&format!("{}{path}", server.base), Some("PL_TEST_TOKEN_CUT"), Paging::None);
        let pulled = pull(&config, &all_time(), &runtime);
        let error = pulled.source_error();
        assert_eq!(error.unit(), format!("{}{path}", server.base));
        assert!(error.message().contains("not read whole"), "{error}");
        assert!(!pulled.error_text().contains(TOKEN));
        // Lines before the cut came through; no line was reported as truncated input.
        let (_, events) = &pulled.units[0];
        assert!(!events.is_empty() && events.len() < 3000, "{path}: {} lines", events.len());
        assert!(events.iter().all(|e| matches!(e, LineEvent::Line { .. })), "{path}");
    }
}

#[test]
fn http_a_complete_body_holding_a_truncated_gzip_is_bad_input_not_a_failure() {
    let runtime = runtime();
    let text = varied_lines(3000);
    let compressed = gzip(text.as_bytes());
    let server = serve(&runtime, move |_, _| Reply::Ok {
        headers: Vec::new(),
        body: compressed[..compressed.len() / 2].to_vec(),
    });
    let pulled = pull(&http(&format!("{}/logs", server.base), None, Paging::None), &all_time(), &runtime);
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    let (last, good) = pulled.units[0].1.split_last().unwrap();
    assert!(
        matches!(last, LineEvent::Bad { problem: LineProblem::Truncated { .. }, number } if *number == good.len() as u64 + 1)
    );
}

#[test]
fn http_a_connection_refused_is_retried_then_reported() {
    let runtime = runtime();
    // A port bound for the whole test but not listening: connections are
    // refused, and no other process can take the port meanwhile.
    let socket = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket
    });
    let port = socket.local_addr().unwrap().port();
    let pulled = pull(&http(&format!("http://127.0.0.1:{port}/logs?key=v"), None, Paging::None), &all_time(), &runtime);
    let error = pulled.source_error();
    assert_eq!(error.unit(), format!("http://127.0.0.1:{port}/logs"));
    assert!(error.message().contains("cannot connect") && error.message().contains("after 3 attempts"), "{error}");
    assert_eq!(pulled.waits.len(), 2);
    drop(socket);
}

// ---------------------------------------------------------------------------
// S3: moto's server on 127.0.0.1.

/// moto's S3 server, killed when dropped.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_python() -> PathBuf {
    if let Some(python) = std::env::var_os("PROMPTLOOP_MOTO_PYTHON") {
        return PathBuf::from(python);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".promptloop/test-venv/bin/python");
    assert!(
        venv.exists(),
        "the S3 tests need moto's server: run scripts/test.sh (it installs moto[server] into .promptloop/test-venv), \
         or set PROMPTLOOP_MOTO_PYTHON to a python that has moto[server]"
    );
    venv
}

/// Starts moto on a port it picks itself (no port is bound, dropped and
/// handed over), and reads the port from the line it prints once it listens:
/// no polling. The rest of its output goes to `moto.log`.
fn start_moto(log_dir: &Path) -> Moto {
    use std::io::BufRead;
    let python = moto_python();
    let log_path = log_dir.join("moto.log");
    let mut child = Command::new(&python)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start moto with {}: {error}", python.display()));
    let mut output = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let endpoint = loop {
        let mut line = String::new();
        if output.read_line(&mut line).unwrap() == 0 {
            let status = child.wait().unwrap();
            panic!("moto exited ({status}) before it listened: {seen}");
        }
        seen.push_str(&line);
        if let Some(at) = line.find("Running on http://127.0.0.1:") {
            break line[at + "Running on ".len()..].trim().to_string();
        }
    };
    // Keep draining its output, so moto never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut log = std::fs::File::create(&log_path).unwrap();
        let _ = log.write_all(seen.as_bytes());
        let _ = std::io::copy(&mut output, &mut log);
    });
    Moto { child, endpoint }
}

fn s3(endpoint: &str, bucket: &str, prefix: &str) -> SourceConfig {
    config(SourceLocation::S3(S3Source {
        bucket: bucket.into(),
        prefix: prefix.into(),
        endpoint: Some(endpoint.into()),
        region: "us-east-1".into(),
        access_key_env: "PL_TEST_S3_ACCESS".into(),
        secret_key_env: "PL_TEST_S3_SECRET".into(),
        session_token_env: "PL_TEST_S3_SESSION".into(),
    }))
}

const S3_SECRET: &str = "s3-secret-9d2e-never-in-messages";
const S3_SESSION_TOKEN: &str = "s3-session-token-51ab-never-in-messages";

#[test]
fn s3_objects_under_the_prefix_are_read_in_key_order() {
    set_env("PL_TEST_S3_ACCESS", "testing-access");
    set_env("PL_TEST_S3_SECRET", S3_SECRET);
    // Temporary credentials carry a session token too (moto does not check it);
    // like the secret, it is never shown.
    set_env("PL_TEST_S3_SESSION", S3_SESSION_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let moto = start_moto(dir.path());
    let runtime = runtime();

    // The bucket (object_store cannot create one), then the objects with object_store.
    let created = runtime.block_on(reqwest::Client::new().put(format!("{}/llm-logs", moto.endpoint)).send()).unwrap();
    assert!(created.status().is_success(), "{}", created.status());
    let store = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("llm-logs")
        .with_region("us-east-1")
        .with_endpoint(&moto.endpoint)
        .with_allow_http(true)
        .with_access_key_id("testing-access")
        .with_secret_access_key(S3_SECRET)
        .build()
        .unwrap();
    let mut two_members = gzip(b"{\"k\":\"b1\"}\n");
    two_members.extend(gzip(b"{\"k\":\"b2\"}\n"));
    let objects: Vec<(&str, Vec<u8>)> = vec![
        ("logs/2024-05/b.jsonl.gz", two_members),
        ("logs/2024-05/a.jsonl", b"{\"k\":\"a1\"}\r\n\n{\"k\":\"a3\"}\n".to_vec()),
        ("logs/2024-05/c.bin", gzip(b"{\"k\":\"c1\"}\n")),
        ("logs/2024-04.jsonl", b"{\"k\":\"april\"}\n".to_vec()),
        ("other/x.jsonl", b"{\"k\":\"other\"}\n".to_vec()),
    ];
    for (key, bytes) in objects {
        runtime.block_on(store.put(&object_store::path::Path::from(key), bytes.into())).unwrap();
    }

    let pulled = pull(&s3(&moto.endpoint, "llm-logs", "logs/2024-05"), &all_time(), &runtime);
    assert!(pulled.error.is_none(), "{:?}", pulled.error);
    assert_eq!(
        pulled.names(),
        ["a.jsonl", "b.jsonl.gz", "c.bin"].map(|f| format!("s3://llm-logs/logs/2024-05/{f}")).to_vec()
    );
    assert_eq!(pulled.units[0].1, vec![line(1, "{\"k\":\"a1\"}"), line(3, "{\"k\":\"a3\"}")]);
    assert_eq!(pulled.texts()[2..], ["{\"k\":\"b1\"}", "{\"k\":\"b2\"}", "{\"k\":\"c1\"}"]);

    // A prefix ending in a slash, and the empty prefix: everything, in key order.
    let pulled = pull(&s3(&moto.endpoint, "llm-logs", "logs/"), &all_time(), &runtime);
    assert_eq!(pulled.units.len(), 4, "{:?}", pulled.names());
    assert_eq!(pulled.names()[0], "s3://llm-logs/logs/2024-04.jsonl");
    let pulled = pull(&s3(&moto.endpoint, "llm-logs", ""), &all_time(), &runtime);
    assert_eq!(pulled.names().last().unwrap(), "s3://llm-logs/other/x.jsonl");

    // Objects last modified before the window are skipped.
    let later = Window { since: Some(Utc::now() + chrono::Duration::hours(1)), until: all_time().until };
    let pulled = pull(&s3(&moto.endpoint, "llm-logs", "logs/"), &later, &runtime);
    assert!(pulled.error.is_none() && pulled.units.is_empty(), "{:?}", pulled.names());

    // A bucket that does not exist: a SourceError naming it, without the secret.
    let pulled = pull(&s3(&moto.endpoint, "no-such-bucket", "logs/"), &all_time(), &runtime);
    let error = pulled.source_error();
    assert_eq!(error.unit(), "s3://no-such-bucket/logs/");
    assert!(error.message().contains("NoSuchBucket") && error.message().contains("check source.bucket"), "{error}");
    assert!(!error.message().contains('\n'), "one line: {error}");
    assert!(!pulled.error_text().contains(S3_SECRET), "{}", pulled.error_text());
    assert!(!pulled.error_text().contains(S3_SESSION_TOKEN), "{}", pulled.error_text());
}

#[test]
fn s3_missing_credentials_name_the_variables() {
    let runtime = runtime();
    let mut config = s3("http://127.0.0.1:9", "b", "");
    if let SourceLocation::S3(s3) = &mut config.location {
        s3.access_key_env = "PL_TEST_S3_NO_ACCESS".into();
        s3.secret_key_env = "PL_TEST_S3_NO_SECRET".into();
    }
    let error = pull(&config, &all_time(), &runtime).error_text();
    assert!(error.contains("PL_TEST_S3_NO_ACCESS and PL_TEST_S3_NO_SECRET"), "{error}");
}
