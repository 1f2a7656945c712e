//! The dataset: examples (JSONL), and their stable split into train, dev and test.
//!
//! Split assignment is a pure function of an example's id, so an example stays
//! in its split as the dataset grows and on every machine.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `[dataset] split`: the shares of train, dev and test (an example's split
/// is a hash of its id, so these are shares in expectation).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFractions {
    pub train: f64,
    pub dev: f64,
    pub test: f64,
}

impl Default for SplitFractions {
    fn default() -> Self {
        Self { train: 0.70, dev: 0.15, test: 0.15 }
    }
}

pub mod store;

/// One example: what goes in, and the reference outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub inputs: Map<String, Value>,
    pub outputs: Map<String, Value>,
    /// Anything else on the line (signal, source ids, date added, ...), kept as is.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Dev,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "train" => Ok(Split::Train),
            "dev" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            other => Err(format!("unknown split `{other}`; use train, dev or test")),
        }
    }
}

/// The split of an id: the first 8 bytes of SHA-256(id), big-endian, modulo
/// 10 000, compared with the cumulative fractions.
pub fn split_of(id: &str, fractions: &SplitFractions) -> Split {
    let digest = Sha256::digest(id.as_bytes());
    let bucket = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 10_000;
    let train_end = (fractions.train * 10_000.0).round() as u64;
    let dev_end = ((fractions.train + fractions.dev) * 10_000.0).round() as u64;
    if bucket < train_end {
        Split::Train
    } else if bucket < dev_end {
        Split::Dev
    } else {
        Split::Test
    }
}

macro_rules! split_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $name(Vec<Example>);

        impl $name {
            /// The split's examples, in file order.
            pub fn examples(&self) -> &[Example] {
                &self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = [Example];
            fn deref(&self) -> &[Example] {
                &self.0
            }
        }
    };
}

split_type!(
    /// The training split: what optimizers learn from (demos, instruction drafts).
    Train
);
split_type!(
    /// The development split: what optimizers select on.
    Dev
);
split_type!(
    /// The held-out test split: read only after the optimizer has returned.
    /// No function under `optimize/` takes one, so the compiler keeps it out.
    /// The optimizer takes train and dev:
    ///
    /// ```no_run
    /// # async fn f(d: &promptloop::dataset::Dataset, start: &promptloop::optimize::Start,
    /// #            ctx: &promptloop::optimize::OptimizeContext, o: &dyn promptloop::optimize::Optimizer) {
    /// promptloop::optimize::optimize(o, start, d.train(), d.dev(), ctx).await;
    /// # }
    /// ```
    ///
    /// and the same call with the test split does not compile:
    ///
    /// ```compile_fail,E0308
    /// # async fn f(d: &promptloop::dataset::Dataset, start: &promptloop::optimize::Start,
    /// #            ctx: &promptloop::optimize::OptimizeContext, o: &dyn promptloop::optimize::Optimizer) {
    /// promptloop::optimize::optimize(o, start, d.train(), d.test(), ctx).await; // expected `&Dev`, found `&Test`
    /// # }
    /// ```
    Test
);

impl Train {
    /// A training split from examples, for tools and tests that build one by hand.
    pub fn new(examples: Vec<Example>) -> Self {
        Self(examples)
    }
}

impl Dev {
    /// A development split from examples, for tools and tests that build one by hand.
    pub fn new(examples: Vec<Example>) -> Self {
        Self(examples)
    }
}

/// A loaded dataset, split. Each split is its own type, so a function that
/// takes a [`Train`] and a [`Dev`] cannot be handed the [`Test`] split.
#[derive(Debug, Clone)]
pub struct Dataset {
    train: Train,
    dev: Dev,
    test: Test,
    /// SHA-256 of the file's bytes.
    pub content_hash: String,
}

impl Dataset {
    pub fn from_examples(examples: Vec<Example>, fractions: &SplitFractions, content_hash: String) -> Self {
        let (mut train, mut dev, mut test) = (Vec::new(), Vec::new(), Vec::new());
        for example in examples {
            match split_of(&example.id, fractions) {
                Split::Train => train.push(example),
                Split::Dev => dev.push(example),
                Split::Test => test.push(example),
            }
        }
        Self { train: Train(train), dev: Dev(dev), test: Test(test), content_hash }
    }

    /// Reads the dataset line by line (never more than [`MAX_EXAMPLE_LINE_BYTES`]
    /// of one line at a time), hashing the bytes as they go by.
    pub fn load(path: &Path, fractions: &SplitFractions) -> Result<Dataset> {
        let file = std::fs::File::open(path).with_context(|| {
            format!("cannot read dataset {}; check [dataset] path in the pipeline file", path.display())
        })?;
        let mut hashing = HashingReader { inner: file, hasher: Sha256::new() };
        let examples = read_examples(std::io::BufReader::new(&mut hashing), path)?;
        if examples.is_empty() {
            bail!("dataset {} has no examples", path.display());
        }
        Ok(Self::from_examples(examples, fractions, hex::encode(hashing.hasher.finalize())))
    }

    pub fn train(&self) -> &Train {
        &self.train
    }
    pub fn dev(&self) -> &Dev {
        &self.dev
    }
    pub fn test(&self) -> &Test {
        &self.test
    }
    pub fn split(&self, split: Split) -> &[Example] {
        match split {
            Split::Train => &self.train,
            Split::Dev => &self.dev,
            Split::Test => &self.test,
        }
    }
    /// Every example: train, then dev, then test.
    pub fn iter(&self) -> impl Iterator<Item = &Example> {
        self.train.iter().chain(self.dev.iter()).chain(self.test.iter())
    }
    pub fn len(&self) -> usize {
        self.train.len() + self.dev.len() + self.test.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The longest line a dataset file (examples or inbox) may have: one example
/// as JSON. A longer line is an error, found without holding more than this
/// much of it in memory.
pub const MAX_EXAMPLE_LINE_BYTES: usize = 1 << 20;

/// Parses JSONL examples. The dataset is curated, so any bad line is an error
/// that names the file and line; nothing is skipped silently.
pub fn parse_examples(bytes: &[u8], path: &Path) -> Result<Vec<Example>> {
    read_examples(bytes, path)
}

/// [`parse_examples`] over a reader, one line at a time.
pub fn read_examples(reader: impl std::io::BufRead, path: &Path) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for line in DatasetLines::new(reader, path) {
        let (line_no, line) = line?;
        let at = || format!("{}:{line_no}", path.display());
        let value: Value = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("{}: not a JSON object ({e}); each line must be one example", at()))?;
        let object = value.as_object().ok_or_else(|| anyhow::anyhow!("{}: expected a JSON object", at()))?;
        for key in ["id", "inputs", "outputs"] {
            if !object.contains_key(key) {
                bail!(
                    "{}: missing field `{key}`; an example is {{\"id\": ..., \"inputs\": {{...}}, \"outputs\": {{...}}}}",
                    at()
                );
            }
        }
        let example: Example = serde_json::from_value(value)
            .map_err(|e| anyhow::anyhow!("{}: {e}; `id` is a string, `inputs` and `outputs` are objects", at()))?;
        if example.id.trim().is_empty() {
            bail!("{}: `id` is empty", at());
        }
        if !seen.insert(example.id.clone()) {
            bail!("{}: id `{}` appears twice; ids must be unique", at(), example.id);
        }
        examples.push(example);
    }
    Ok(examples)
}

/// The non-blank lines of a dataset file, numbered from 1 as an editor shows
/// them, without the `\n` (or `\r\n`) and, on the first line, without a UTF-8
/// byte order mark (editors on Windows write one). A line longer than
/// [`MAX_EXAMPLE_LINE_BYTES`] or not valid UTF-8 is an error naming the file
/// and line; the iterator ends after it.
pub(crate) struct DatasetLines<'p, R> {
    reader: R,
    path: &'p Path,
    number: usize,
    line: Vec<u8>,
    finished: bool,
}

impl<'p, R: std::io::BufRead> DatasetLines<'p, R> {
    pub(crate) fn new(reader: R, path: &'p Path) -> Self {
        Self { reader, path, number: 0, line: Vec::new(), finished: false }
    }

    /// Reads the next line into `self.line`; false at the end of the file.
    fn read_line(&mut self) -> Result<bool> {
        self.line.clear();
        let mut any = false;
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot read {}", self.path.display())),
            };
            if available.is_empty() {
                return Ok(any);
            }
            any = true;
            let newline = available.iter().position(|&b| b == b'\n');
            let content = &available[..newline.unwrap_or(available.len())];
            // One byte more than the limit, for a `\r` before the `\n`.
            if self.line.len() + content.len() > MAX_EXAMPLE_LINE_BYTES + 1 {
                return Err(line_too_long(self.path, self.number + 1));
            }
            self.line.extend_from_slice(content);
            let consumed = newline.map_or(content.len(), |at| at + 1);
            self.reader.consume(consumed);
            if newline.is_some() {
                return Ok(true);
            }
        }
    }

    fn next_line(&mut self) -> Result<Option<(usize, String)>> {
        loop {
            if !self.read_line()? {
                return Ok(None);
            }
            self.number += 1;
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            let mut content = self.line.as_slice();
            if self.number == 1 {
                content = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(content);
            }
            if content.len() > MAX_EXAMPLE_LINE_BYTES {
                return Err(line_too_long(self.path, self.number));
            }
            if content.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let text = std::str::from_utf8(content).map_err(|_| {
                anyhow::anyhow!("{}:{}: not valid UTF-8; re-save the file as UTF-8", self.path.display(), self.number)
            })?;
            return Ok(Some((self.number, text.to_string())));
        }
    }
}

impl<R: std::io::BufRead> Iterator for DatasetLines<'_, R> {
    type Item = Result<(usize, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let next = self.next_line().transpose();
        if !matches!(next, Some(Ok(_))) {
            self.finished = true;
        }
        next
    }
}

fn line_too_long(path: &Path, line: usize) -> anyhow::Error {
    anyhow::anyhow!(
        "{}:{line}: the line is longer than {MAX_EXAMPLE_LINE_BYTES} bytes (1 MiB), the most one example may take; shorten that example (or delete the line) and try again",
        path.display()
    )
}

/// Passes bytes through, hashing them.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: std::io::Read> std::io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
