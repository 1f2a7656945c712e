//! The model's tokenizer, rebuilt from the GGUF metadata: byte-level BPE over
//! the stored tokens and merges, with SmolLM2's pre-tokenization (every digit on
//! its own, then the GPT-2 byte-level split, no prefix space).
//!
//! Control tokens (`<|im_start|>`, `<|im_end|>`, ...) are never recognised in
//! text: [`Tokenizer::encode`] treats their spelling as ordinary characters, and
//! the chat prompt inserts them by id. A message that contains the string
//! `<|im_end|>` therefore cannot close its own turn.

use anyhow::{Context, Result, anyhow, bail};
use candle_core::quantized::gguf_file;

use crate::lm::{ChatMessage, Role};

/// The system message SmolLM2's chat template adds when the conversation has none.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";

/// GGUF `tokenizer.ggml.token_type` value for control tokens.
const TOKEN_TYPE_CONTROL: u32 = 3;

pub struct Tokenizer {
    bpe: tokenizers::Tokenizer,
    /// The bytes each token stands for; empty for control tokens.
    token_bytes: Vec<Vec<u8>>,
    control: Vec<bool>,
    /// The token of each single byte, where the vocabulary has one.
    byte_token: [Option<u32>; 256],
    pub im_start: u32,
    pub im_end: u32,
    pub eos: u32,
    pub endoftext: Option<u32>,
}

/// GPT-2's reversible map from bytes to printable characters, as a table
/// indexed by byte.
fn byte_to_char_table() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).expect("latin-1 code point")
        } else {
            let c = char::from_u32(next).expect("code point below 0x200");
            next += 1;
            c
        };
    }
    table
}

fn metadata<'a>(content: &'a gguf_file::Content, key: &str) -> Result<&'a gguf_file::Value> {
    content.metadata.get(key).with_context(|| format!("the model file has no `{key}` metadata"))
}

fn metadata_u32(content: &gguf_file::Content, key: &str) -> Result<u32> {
    use gguf_file::Value as V;
    Ok(match metadata(content, key)? {
        V::U8(v) => *v as u32,
        V::I8(v) => *v as u32,
        V::U16(v) => *v as u32,
        V::I16(v) => *v as u32,
        V::U32(v) => *v,
        V::I32(v) => *v as u32,
        V::U64(v) => *v as u32,
        V::I64(v) => *v as u32,
        other => bail!("metadata `{key}` is not an integer: {other:?}"),
    })
}

fn metadata_strings(content: &gguf_file::Content, key: &str) -> Result<Vec<String>> {
    metadata(content, key)?
        .to_vec()
        .map_err(|e| anyhow!("metadata `{key}`: {e}"))?
        .iter()
        .map(|v| v.to_string().cloned().map_err(|e| anyhow!("metadata `{key}`: {e}")))
        .collect()
}

impl Tokenizer {
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let kind = metadata(content, "tokenizer.ggml.model")?.to_string().map_err(|e| anyhow!("{e}"))?;
        if kind != "gpt2" {
            bail!("unsupported tokenizer `{kind}` (only byte-level BPE is supported)");
        }
        let tokens = metadata_strings(content, "tokenizer.ggml.tokens")?;
        let merges = metadata_strings(content, "tokenizer.ggml.merges")?;
        let types: Vec<u32> = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| anyhow!("{e}"))?
                .iter()
                .map(|t| t.to_i32().map(|t| t as u32).or_else(|_| t.to_u32()).map_err(|e| anyhow!("{e}")))
                .collect::<Result<_>>()?,
            None => vec![1; tokens.len()],
        };
        Self::new(&tokens, &merges, &types, metadata_u32(content, "tokenizer.ggml.eos_token_id").ok())
    }

    /// Builds the tokenizer from the vocabulary (byte-level spellings), the merge
    /// rules ("a b") and the GGUF token types.
    pub fn new(tokens: &[String], merges: &[String], types: &[u32], eos: Option<u32>) -> Result<Self> {
        use tokenizers::models::bpe::{BPE, Vocab};
        use tokenizers::pre_tokenizers::{
            PreTokenizerWrapper, byte_level::ByteLevel, digits::Digits, sequence::Sequence,
        };

        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .with_context(|| format!("malformed merge rule `{m}`"))
            })
            .collect::<Result<_>>()?;
        let model = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| anyhow!("building the BPE model: {e}"))?;
        let mut bpe = tokenizers::Tokenizer::new(model);
        bpe.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true)),
        ]))));

        let table = byte_to_char_table();
        let mut char_to_byte = std::collections::HashMap::new();
        for (b, c) in table.iter().enumerate() {
            char_to_byte.insert(*c, b as u8);
        }
        let control: Vec<bool> = (0..tokens.len()).map(|i| types.get(i) == Some(&TOKEN_TYPE_CONTROL)).collect();
        let token_bytes: Vec<Vec<u8>> = tokens
            .iter()
            .zip(&control)
            .map(|(t, &is_control)| {
                if is_control {
                    return Vec::new();
                }
                // A spelling outside the byte alphabet stands for its own UTF-8.
                match t.chars().map(|c| char_to_byte.get(&c).copied()).collect::<Option<Vec<u8>>>() {
                    Some(bytes) => bytes,
                    None => t.as_bytes().to_vec(),
                }
            })
            .collect();
        let mut byte_token = [None; 256];
        for (id, t) in tokens.iter().enumerate() {
            let mut chars = t.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                if let Some(&b) = char_to_byte.get(&c) {
                    byte_token[b as usize].get_or_insert(id as u32);
                }
            }
        }
        let find = |s: &str| tokens.iter().position(|t| t == s).map(|i| i as u32);
        let im_start = find("<|im_start|>").context("the vocabulary has no <|im_start|> token")?;
        let im_end = find("<|im_end|>").context("the vocabulary has no <|im_end|> token")?;
        Ok(Self {
            bpe,
            token_bytes,
            control,
            byte_token,
            im_start,
            im_end,
            eos: eos.unwrap_or(im_end),
            endoftext: find("<|endoftext|>"),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.token_bytes.len()
    }

    /// Tokens of plain text. Control-token spellings are not special here.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        if text.is_empty() {
            return Vec::new();
        }
        match self.bpe.encode(text, false) {
            Ok(encoding) => encoding.get_ids().to_vec(),
            // Byte-level BPE covers all text; should it fail, spell the bytes out.
            Err(_) => text.bytes().filter_map(|b| self.byte_token[b as usize]).collect(),
        }
    }

    /// Tokens of arbitrary bytes: the BPE for the valid UTF-8 runs, single-byte
    /// tokens (where the vocabulary has them) for the rest.
    pub fn encode_bytes(&self, bytes: &[u8]) -> Vec<u32> {
        let mut out = Vec::new();
        for chunk in bytes.utf8_chunks() {
            out.extend(self.encode(chunk.valid()));
            out.extend(chunk.invalid().iter().filter_map(|&b| self.byte_token[b as usize]));
        }
        out
    }

    /// The bytes a token stands for (empty for control tokens).
    pub fn token_bytes(&self, id: u32) -> &[u8] {
        self.token_bytes.get(id as usize).map(Vec::as_slice).unwrap_or(&[])
    }

    pub fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(true)
    }

    /// Whether the model ends its turn with this token.
    pub fn is_end_of_turn(&self, id: u32) -> bool {
        id == self.im_end || id == self.eos || Some(id) == self.endoftext
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.token_bytes(id).iter().copied()).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The ChatML prompt for these messages, ending with the assistant's
    /// generation prompt. Returns the tokens and, for each message, the range of
    /// its tokens (role line and content) in the prompt.
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> (Vec<u32>, Vec<std::ops::Range<usize>>) {
        let newline = self.encode("\n");
        let mut out = Vec::new();
        let mut spans = Vec::with_capacity(messages.len());
        let turn = |out: &mut Vec<u32>, role: &str, content: &str| {
            out.push(self.im_start);
            let start = out.len();
            out.extend(self.encode(&format!("{role}\n{content}")));
            let end = out.len();
            out.push(self.im_end);
            out.extend(&newline);
            start..end
        };
        if messages.first().is_none_or(|m| m.role != Role::System) {
            turn(&mut out, "system", DEFAULT_SYSTEM_PROMPT);
        }
        for m in messages {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            spans.push(turn(&mut out, role, &m.content));
        }
        out.push(self.im_start);
        out.extend(self.encode("assistant\n"));
        (out, spans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy vocabulary: control tokens, every byte, and a few merges.
    fn toy() -> Tokenizer {
        let table = byte_to_char_table();
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
        let mut types = vec![3, 3, 3];
        for c in table {
            tokens.push(c.to_string());
            types.push(1);
        }
        let merges: Vec<String> = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "1 2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for m in &merges {
            tokens.push(m.replace(' ', ""));
            types.push(1);
        }
        Tokenizer::new(&tokens, &merges, &types, Some(2)).unwrap()
    }

    #[test]
    fn byte_table_is_a_bijection() {
        let table = byte_to_char_table();
        let set: std::collections::HashSet<char> = table.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(table[b' ' as usize], 'Ġ');
        assert_eq!(table[b'\n' as usize], 'Ċ');
        assert_eq!(table[b'a' as usize], 'a');
    }

    #[test]
    fn encodes_with_merges_and_round_trips() {
        let t = toy();
        let ids = t.encode("hello world");
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert_eq!(t.decode(&ids), "hello world");
        for s in ["héllo wörld 🦀", "  leading spaces", "tabs\tand\nnewlines\n\n", "x"] {
            assert_eq!(t.decode(&t.encode(s)), s);
        }
    }

    #[test]
    fn digits_are_split_individually() {
        let t = toy();
        // "1 2" is a merge, but the pre-tokenizer never lets two digits meet.
        let ids = t.encode("12");
        assert_eq!(ids.len(), 2);
        assert_eq!(t.decode(&ids), "12");
    }

    #[test]
    fn control_spellings_in_text_are_plain_text() {
        let t = toy();
        let ids = t.encode("a<|im_end|>b");
        assert!(!ids.contains(&t.im_end));
        assert_eq!(t.decode(&ids), "a<|im_end|>b");
        assert!(t.token_bytes(t.im_end).is_empty());
    }

    #[test]
    fn chat_prompt_inserts_default_system_message() {
        let t = toy();
        let (ids, spans) = t.chat_prompt(&[ChatMessage::new(Role::User, "hi <|im_end|>")]);
        assert_eq!(ids.iter().filter(|&&i| i == t.im_start).count(), 3);
        assert_eq!(ids.iter().filter(|&&i| i == t.im_end).count(), 2);
        assert!(!ids[spans[0].clone()].contains(&t.im_end));
        let text: String = ids
            .iter()
            .map(|&i| {
                if i == t.im_start {
                    "<S>".to_string()
                } else if i == t.im_end {
                    "<E>".to_string()
                } else {
                    t.decode(&[i])
                }
            })
            .collect();
        assert_eq!(text, format!("<S>system\n{DEFAULT_SYSTEM_PROMPT}<E>\n<S>user\nhi <|im_end|><E>\n<S>assistant\n"));
        let (ids, _) = t.chat_prompt(&[ChatMessage::new(Role::System, "sys"), ChatMessage::new(Role::User, "u")]);
        assert_eq!(ids.iter().filter(|&&i| i == t.im_start).count(), 3);
    }

    #[test]
    fn invalid_utf8_bytes_encode_byte_by_byte() {
        let t = toy();
        let ids = t.encode_bytes(&[0xf0, 0x9f]);
        assert_eq!(ids.len(), 2);
        assert_eq!(t.token_bytes(ids[0]), &[0xf0]);
    }
}
