//! A client for any OpenAI-compatible `/v1/chat/completions` endpoint.
