//! A client for any OpenAI-compatible `/v1/chat/completions` endpoint.
// placeholder API until the client lands
pub enum SchemaStyle {
    OpenAi,
    JsonObject,
    None,
}
pub struct OpenAiConfig {
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    pub timeout_secs: f64,
    pub max_retries: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub schema_style: SchemaStyle,
}
pub struct OpenAiClient;
impl OpenAiClient {
    pub fn new(_c: OpenAiConfig) -> anyhow::Result<Self> {
        anyhow::bail!("no client yet")
    }
}
#[async_trait::async_trait]
impl super::LanguageModel for OpenAiClient {
    fn describe(&self) -> super::LmDescription {
        todo!()
    }
    async fn complete(&self, _r: &super::LmRequest) -> Result<super::LmResponse, super::LmError> {
        todo!()
    }
}
