//! A smart-HTTP git server on 127.0.0.1 standing in for github.com: `git
//! http-backend` run as CGI behind HTTP Basic auth with user `x-access-token`
//! and one token, as GitHub takes a workflow's token. It records every request
//! and checks each against the smart HTTP protocol (gitprotocol-http(5)):
//! anything else is a violation the test asserts is absent.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// The user GitHub expects alongside an installation or workflow token.
pub const TOKEN_USER: &str = "x-access-token";

/// What the server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The Basic user, if the request carried Basic credentials.
    pub user: Option<String>,
    /// The credentials were exactly `x-access-token` and the server's token.
    pub authorized: bool,
}

struct Shared {
    root: PathBuf,
    expected_authorization: String,
    /// Tokens that may fetch but not push, as a token without `contents: write`.
    read_only: Mutex<Vec<String>>,
    seen: Mutex<Vec<Seen>>,
    violations: Mutex<Vec<String>>,
}

pub struct GitHttpServer {
    /// `http://127.0.0.1:<port>`; a bare repository `<root>/x.git` is at `<url>/x.git`.
    pub url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl GitHttpServer {
    /// Serves the bare repositories under `root` to clients presenting `token`.
    pub fn start(root: &Path, token: &str) -> Self {
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            expected_authorization: format!("Basic {}", base64(format!("{TOKEN_USER}:{token}").as_bytes())),
            read_only: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = Router::new().fallback(handle).with_state(shared.clone());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        GitHttpServer { url, shared, shutdown: Some(shutdown), runtime: Some(runtime) }
    }

    /// Also accepts `token`, for fetching only: a push gets 403 as from GitHub.
    pub fn add_read_only_token(&self, token: &str) {
        let authorization = format!("Basic {}", base64(format!("{TOKEN_USER}:{token}").as_bytes()));
        self.shared.read_only.lock().unwrap().push(authorization);
    }

    pub fn repo_url(&self, name: &str) -> String {
        format!("{}/{name}", self.url)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.shared.violations.lock().unwrap().clone()
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let authorization = header(&request, AUTHORIZATION);
    let content_type = header(&request, CONTENT_TYPE);
    let content_encoding = header(&request, HeaderName::from_static("content-encoding"));

    let mut violations = protocol_violations(&method, &path, &query, content_type.as_deref());
    let user = match authorization.as_deref() {
        None => None,
        Some(value) => match value.strip_prefix("Basic ") {
            Some(encoded) => unbase64(encoded).map(|plain| plain.split(':').next().unwrap_or("").to_string()),
            None => {
                violations.push(format!("{method} {path}: Authorization is not HTTP Basic"));
                None
            }
        },
    };
    let full = authorization.as_deref() == Some(shared.expected_authorization.as_str());
    let read_only = authorization.as_ref().is_some_and(|a| shared.read_only.lock().unwrap().contains(a));
    let authorized = full || read_only;
    let pushing = query.contains("service=git-receive-pack") || path.ends_with("/git-receive-pack");
    shared.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
        user,
        authorized,
    });
    let protocol_ok = violations.is_empty();
    shared.violations.lock().unwrap().extend(violations);
    if !protocol_ok {
        return (StatusCode::BAD_REQUEST, "not a smart HTTP git request").into_response();
    }
    if !authorized {
        let mut response = (StatusCode::UNAUTHORIZED, "Authentication required").into_response();
        response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"GitHub\""));
        return response;
    }
    if pushing && !full {
        return (StatusCode::FORBIDDEN, "Permission to remote.git denied to github-actions[bot].").into_response();
    }

    let body = match axum::body::to_bytes(request.into_body(), 64 * 1024 * 1024).await {
        Ok(body) => body,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let root = shared.root.clone();
    let output = tokio::task::spawn_blocking(move || {
        run_backend(&root, &method, &path, &query, content_type, content_encoding, &body)
    })
    .await
    .unwrap();
    cgi_response(&output)
}

fn header(request: &Request, name: HeaderName) -> Option<String> {
    request.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// What gitprotocol-http(5) allows a smart client to send.
fn protocol_violations(method: &Method, path: &str, query: &str, content_type: Option<&str>) -> Vec<String> {
    let mut violations = Vec::new();
    if *method == Method::GET && path.ends_with("/info/refs") {
        let service = query.split('&').find_map(|pair| pair.strip_prefix("service="));
        if !matches!(service, Some("git-upload-pack" | "git-receive-pack")) {
            violations.push(format!("GET {path}?{query}: a smart client names the service"));
        }
    } else if *method == Method::POST && (path.ends_with("/git-upload-pack") || path.ends_with("/git-receive-pack")) {
        let service = path.rsplit('/').next().unwrap();
        let expected = format!("application/x-{service}-request");
        if content_type != Some(expected.as_str()) {
            violations.push(format!("POST {path}: Content-Type {content_type:?}, expected {expected}"));
        }
        if !query.is_empty() {
            violations.push(format!("POST {path}: unexpected query {query}"));
        }
    } else {
        violations.push(format!("{method} {path}: not a smart HTTP git request"));
    }
    violations
}

fn run_backend(
    root: &Path,
    method: &Method,
    path: &str,
    query: &str,
    content_type: Option<String>,
    content_encoding: Option<String>,
    body: &[u8],
) -> Vec<u8> {
    let mut command = Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", method.as_str())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", TOKEN_USER)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(content_type) = content_type {
        command.env("CONTENT_TYPE", content_type);
    }
    if let Some(encoding) = content_encoding {
        command.env("HTTP_CONTENT_ENCODING", encoding);
    }
    let mut child = command.spawn().expect("git http-backend runs");
    let mut stdin = child.stdin.take().unwrap();
    let body = body.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    output.stdout
}

/// A CGI reply: headers (with an optional `Status:`), a blank line, the body.
fn cgi_response(output: &[u8]) -> Response {
    let (head, body) = match find(output, b"\r\n\r\n") {
        Some(at) => (&output[..at], &output[at + 4..]),
        None => match find(output, b"\n\n") {
            Some(at) => (&output[..at], &output[at + 2..]),
            None => return (StatusCode::BAD_GATEWAY, "git http-backend wrote no headers").into_response(),
        },
    };
    let mut response = Response::new(Body::from(body.to_vec()));
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(500);
            *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64(input: &[u8]) -> String {
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn unbase64(input: &str) -> Option<String> {
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for c in input.trim_end_matches('=').bytes() {
        let value = ALPHABET.iter().position(|&a| a == c)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}
