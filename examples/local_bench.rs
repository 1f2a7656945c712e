//! Measures the embedded model: prefill and decode speed, and the effect of
//! reusing a cached prompt prefix.
//!
//! cargo run --release --example local_bench -- [model.gguf] [threads]

use std::path::PathBuf;
use std::time::Instant;

use promptloop::lm::local::{DEFAULT_MODEL_PATH, LocalEngine, LocalOptions};
use promptloop::lm::{ChatMessage, LmRequest, Role};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args.next().map(PathBuf::from).unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL_PATH));
    let threads = args.next().map(|t| t.parse()).transpose()?;
    let t0 = Instant::now();
    let engine = LocalEngine::load(&path, LocalOptions { threads, constrained: true, prefix_cache_mb: 256 })?;
    println!("loaded in {:.2}s", t0.elapsed().as_secs_f64());

    let filler: String = (0..72).map(|i| format!("Rule {i}: answer briefly. ")).collect();
    let shared = format!("You sort customer messages into queues.\n{filler}");
    let (tokens, _) = engine.prompt_tokens(&[ChatMessage::new(Role::System, shared.clone())]);
    println!("shared prefix: {} tokens", tokens.len());

    let request = |suffix: &str, max_tokens: u32| {
        let mut r = LmRequest::new(vec![
            ChatMessage::new(Role::System, shared.clone()),
            ChatMessage::new(Role::User, suffix.to_string()),
        ]);
        r.max_tokens = max_tokens;
        r
    };
    let suffix = "My card payment was declined twice at the supermarket today although my balance is fine. What should I do now?";

    // Cold prefill: one generated token, nothing cached that matches.
    let cold = request(suffix, 1);
    let prompt_len = engine.prompt_tokens(&cold.messages).0.len();
    let _ = engine.complete_blocking(&request("warm up", 1))?;
    let _ = engine.complete_blocking(&LmRequest::new(vec![ChatMessage::new(Role::User, "reset")]))?;
    let t = Instant::now();
    engine.complete_blocking(&cold)?;
    let cold_s = t.elapsed().as_secs_f64();
    println!("cold prompt of {prompt_len} tokens: {cold_s:.3}s ({:.1} tok/s prefill)", prompt_len as f64 / cold_s);

    // Warm: same shared prefix, different suffix.
    let warm = request(
        "I sent money to my friend yesterday and it has not arrived. Where is it, and how long do transfers usually take to reach another bank?",
        1,
    );
    let warm_len = engine.prompt_tokens(&warm.messages).0.len();
    let t = Instant::now();
    engine.complete_blocking(&warm)?;
    let warm_s = t.elapsed().as_secs_f64();
    println!(
        "warm prompt of {warm_len} tokens ({} new): {warm_s:.3}s, {:.1}x faster than cold",
        warm_len - tokens.len() + 1,
        cold_s / warm_s
    );

    // Decode: generate 64 tokens after a cached prompt.
    let mut generate = request(suffix, 65);
    generate.stop = vec![];
    engine.complete_blocking(&request(suffix, 1))?;
    let t = Instant::now();
    let r = engine.complete_blocking(&generate)?;
    let s = t.elapsed().as_secs_f64();
    let n = r.usage.completion_tokens;
    println!("decode: {n} tokens in {s:.3}s ({:.1} tok/s)", n as f64 / s);
    println!("reply: {:?}", r.text);
    Ok(())
}
