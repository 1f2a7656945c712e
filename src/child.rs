//! External commands a pipeline declares — a `command` metric, a `command`
//! tool — run one way: without a shell, from the pipeline's root, in a process
//! group of their own that is killed whole when the command overruns its time
//! limit, JSON on stdin, stdout and stderr read to their end but kept only up
//! to a cap. Error texts quote the end of stderr, never stdout (which may hold
//! an example's content).

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// The most stderr kept: its end, for error messages.
const MAX_STDERR_BYTES: usize = 64 * 1024;
/// Lines of stderr an error message quotes, and their characters in all.
const STDERR_LINES: usize = 5;
const STDERR_CHARS: usize = 600;

/// A command that ran to its end.
pub struct Finished {
    pub status: ExitStatus,
    /// At most the cap given, from the start.
    pub stdout: Vec<u8>,
    /// The last bytes of stderr.
    pub stderr: Vec<u8>,
}

/// Why a command did not run to its end.
#[derive(Debug)]
pub enum Failure {
    /// It could not be started (the reason says why and where).
    Start(String),
    /// It overran its time limit; it and every process it started were killed.
    TimedOut,
    /// It could not be waited for.
    Wait(String),
}

/// The program of `command`: a relative path with a slash resolves against
/// `dir`; a bare name is looked up on `PATH`.
pub fn program_path(command: &[String], dir: &Path) -> PathBuf {
    let program = Path::new(&command[0]);
    if program.is_relative() && program.components().count() > 1 { dir.join(program) } else { program.to_path_buf() }
}

/// Runs `command` in `dir` with `input` on stdin, for at most `timeout`,
/// keeping at most `max_stdout` bytes of stdout. A command that does not read
/// its stdin is not an error.
pub async fn run(
    command: &[String],
    dir: &Path,
    input: Vec<u8>,
    timeout: Duration,
    max_stdout: usize,
) -> Result<Finished, Failure> {
    let shown = command.join(" ");
    let mut child = tokio::process::Command::new(program_path(command, dir));
    child
        .args(&command[1..])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    child.process_group(0);
    let mut child =
        child.spawn().map_err(|e| Failure::Start(format!("cannot start `{shown}` in {}: {e}", dir.display())))?;
    let pid = child.id();
    let stdin = child.stdin.take();
    let writer = async move {
        if let Some(mut stdin) = stdin {
            let _ = stdin.write_all(&input).await;
            let _ = stdin.shutdown().await;
        }
    };
    let stdout = read_capped(child.stdout.take(), max_stdout, false);
    let stderr = read_capped(child.stderr.take(), MAX_STDERR_BYTES, true);
    let ran = async {
        let (_, out, err, status) = tokio::join!(writer, stdout, stderr, child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(timeout, ran).await {
        Ok((stdout, stderr, Ok(status))) => Ok(Finished { status, stdout, stderr }),
        Ok((_, _, Err(e))) => Err(Failure::Wait(format!("`{shown}` could not be waited for: {e}"))),
        Err(_) => {
            kill_group(pid);
            let _ = child.kill().await;
            Err(Failure::TimedOut)
        }
    }
}

/// Reads a pipe to its end, keeping at most `cap` bytes: the first ones, or
/// with `keep_end` the last ones.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, cap: usize, keep_end: bool) -> Vec<u8> {
    let Some(mut pipe) = pipe else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if keep_end {
                    kept.extend_from_slice(&buffer[..n]);
                    let excess = kept.len().saturating_sub(cap);
                    kept.drain(..excess);
                } else if kept.len() < cap {
                    let room = (cap - kept.len()).min(n);
                    kept.extend_from_slice(&buffer[..room]);
                }
            }
        }
    }
    kept
}

#[cfg(unix)]
fn kill_group(pid: Option<u32>) {
    unsafe extern "C" {
        fn kill(pid: i32, signal: i32) -> i32;
    }
    const SIGKILL: i32 = 9;
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0) {
        // The child leads its own process group: `-pid` names all of it.
        // SAFETY: kill(2) with a negative pid signals that process group only.
        unsafe {
            kill(-pid, SIGKILL);
        }
    }
}

#[cfg(not(unix))]
fn kill_group(_pid: Option<u32>) {}

/// `exited with status 2`, `was killed by signal 9`.
pub fn exit_text(status: &ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("was killed by signal {signal}");
        }
    }
    match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => "exited abnormally".into(),
    }
}

/// `; stderr: ...` with the last lines of stderr, or nothing when it was empty.
pub fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(STDERR_LINES)..].join(" | ");
    let count = tail.chars().count();
    let tail = if count > STDERR_CHARS {
        format!("…{}", tail.chars().skip(count - STDERR_CHARS).collect::<String>())
    } else {
        tail
    };
    format!("; stderr: {tail}")
}
