//! The embedded model: a GGUF llama-architecture model run in-process with candle.
