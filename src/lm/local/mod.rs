//! The embedded model: a GGUF llama-architecture model run in-process with candle.
// placeholder API until the engine lands
use std::path::Path;
#[derive(Debug, Clone, Default)]
pub struct LocalOptions {
    pub threads: Option<usize>,
    pub constrained: bool,
}
pub struct LocalEngine;
impl LocalEngine {
    pub fn load(_p: &Path, _o: LocalOptions) -> anyhow::Result<LocalEngine> {
        anyhow::bail!("no engine yet")
    }
}
#[async_trait::async_trait]
impl super::LanguageModel for LocalEngine {
    fn describe(&self) -> super::LmDescription {
        todo!()
    }
    async fn complete(&self, _r: &super::LmRequest) -> Result<super::LmResponse, super::LmError> {
        todo!()
    }
}
