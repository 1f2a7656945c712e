//! `command`: any program scores the prediction. It reads
//! `{"inputs": ..., "outputs": ..., "prediction": ...}` (the reference outputs
//! under `outputs`) on stdin and writes `{"score": x, "feedback": "..."}` on
//! stdout. It runs without a shell in the pipeline's root, in a process group
//! of its own that is killed when it overruns its time limit. A command that
//! fails scores its example 0 with the reason; the run goes on.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{Metric, MetricError, Score};
use crate::dataset::Example;

/// The most stdout read from a command: a verdict is a line.
const MAX_STDOUT_BYTES: u64 = 1024 * 1024;
/// The most stderr kept: its end, for the error message.
const MAX_STDERR_BYTES: u64 = 64 * 1024;
/// Lines of stderr an error message quotes, and their characters in all.
const STDERR_LINES: usize = 5;
const STDERR_CHARS: usize = 600;

pub struct CommandMetric {
    pub field: Option<String>,
    pub command: Vec<String>,
    pub dir: PathBuf,
    pub timeout: Duration,
}

impl CommandMetric {
    fn program(&self) -> PathBuf {
        let program = Path::new(&self.command[0]);
        if program.is_relative() && program.components().count() > 1 {
            self.dir.join(program)
        } else {
            program.to_path_buf()
        }
    }

    fn shown(&self) -> String {
        self.command.join(" ")
    }
}

#[async_trait]
impl Metric for CommandMetric {
    fn name(&self) -> String {
        match &self.field {
            Some(field) => format!("command({}; {field})", self.shown()),
            None => format!("command({})", self.shown()),
        }
    }

    fn is_binary(&self) -> bool {
        false
    }

    async fn score(&self, example: &Example, prediction: &Map<String, Value>) -> Result<Score, MetricError> {
        if let Some(field) = &self.field
            && !prediction.contains_key(field)
        {
            return Ok(Score { value: 0.0, feedback: format!("the prediction has no `{field}`") });
        }
        let mut input = json!({"inputs": example.inputs, "outputs": example.outputs, "prediction": prediction});
        if let Some(field) = &self.field {
            input["field"] = Value::String(field.clone());
        }
        let shown = self.shown();
        let mut command = tokio::process::Command::new(self.program());
        command
            .args(&self.command[1..])
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command
            .spawn()
            .map_err(|e| MetricError(format!("cannot start `{shown}` in {}: {e}", self.dir.display())))?;
        let pid = child.id();

        let stdin = child.stdin.take();
        let body = serde_json::to_vec(&input).unwrap_or_default();
        // A command that does not read its stdin closes the pipe: not an error.
        let writer = async move {
            if let Some(mut stdin) = stdin {
                let _ = stdin.write_all(&body).await;
                let _ = stdin.shutdown().await;
            }
        };
        let stdout = read_capped(child.stdout.take(), MAX_STDOUT_BYTES, false);
        let stderr = read_capped(child.stderr.take(), MAX_STDERR_BYTES, true);
        let run = async {
            let (_, out, err, status) = tokio::join!(writer, stdout, stderr, child.wait());
            (out, err, status)
        };
        let (stdout, stderr, status) = match tokio::time::timeout(self.timeout, run).await {
            Ok(finished) => finished,
            Err(_) => {
                kill_group(pid);
                let _ = child.kill().await;
                return Err(MetricError(format!(
                    "`{shown}` did not finish within its time limit of {}s and was killed",
                    self.timeout.as_secs_f64()
                )));
            }
        };
        let status = status.map_err(|e| MetricError(format!("`{shown}` could not be waited for: {e}")))?;
        if !status.success() {
            return Err(MetricError(format!("`{shown}` {}{}", exit_text(&status), stderr_tail(&stderr))));
        }
        let verdict =
            parse_verdict(&stdout).map_err(|e| MetricError(format!("`{shown}` {e}{}", stderr_tail(&stderr))))?;
        Ok(verdict)
    }
}

/// Reads a pipe to its end, keeping at most `cap` bytes: the first ones, or
/// with `keep_end` the last ones.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, cap: u64, keep_end: bool) -> Vec<u8> {
    let Some(mut pipe) = pipe else { return Vec::new() };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if keep_end {
                    kept.extend_from_slice(&buffer[..n]);
                    let excess = kept.len().saturating_sub(cap as usize);
                    kept.drain(..excess);
                } else if (kept.len() as u64) < cap {
                    let room = (cap as usize - kept.len()).min(n);
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

fn exit_text(status: &std::process::ExitStatus) -> String {
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
fn stderr_tail(stderr: &[u8]) -> String {
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

/// `{"score": x, "feedback": "..."}`: the whole of stdout, or its last
/// non-empty line (a command may log before its verdict). Never quotes
/// stdout, which may hold the example's content.
fn parse_verdict(stdout: &[u8]) -> Result<Score, String> {
    let text = String::from_utf8_lossy(stdout);
    if text.trim().is_empty() {
        return Err("printed nothing on stdout; it must print {\"score\": x, \"feedback\": \"...\"}".into());
    }
    let parsed: Result<Value, _> = serde_json::from_str(text.trim()).or_else(|first| {
        text.lines().rev().find(|l| !l.trim().is_empty()).map_or(Err(first), |l| serde_json::from_str(l.trim()))
    });
    let verdict = match parsed {
        Ok(Value::Object(verdict)) => verdict,
        Ok(_) => {
            return Err(
                "printed JSON that is not an object; it must print {\"score\": x, \"feedback\": \"...\"}".into()
            );
        }
        Err(e) => {
            return Err(format!(
                "printed {} bytes on stdout that are not a JSON verdict ({e}); it must print {{\"score\": x, \"feedback\": \"...\"}}",
                stdout.len()
            ));
        }
    };
    let score = match verdict.get("score") {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
        Some(_) => return Err("printed a `score` that is not a number".into()),
        None => return Err("printed a verdict without `score`".into()),
    };
    if !(0.0..=1.0).contains(&score) {
        return Err(format!("printed score {score}, outside 0..=1"));
    }
    let feedback = match verdict.get("feedback") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    Ok(Score { value: score, feedback })
}
