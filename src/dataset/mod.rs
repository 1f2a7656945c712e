//! The dataset: examples (JSONL), and their stable split into train, dev and test.
//!
//! Split assignment is a pure function of an example's id, so an example stays
//! in its split as the dataset grows and on every machine.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::config::SplitFractions;

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

    pub fn load(path: &Path, fractions: &SplitFractions) -> Result<Dataset> {
        let bytes = std::fs::read(path).with_context(|| {
            format!("cannot read dataset {}; check [dataset] path in the pipeline file", path.display())
        })?;
        let examples = parse_examples(&bytes, path)?;
        if examples.is_empty() {
            bail!("dataset {} has no examples", path.display());
        }
        Ok(Self::from_examples(examples, fractions, hex::encode(Sha256::digest(&bytes))))
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
    pub fn len(&self) -> usize {
        self.train.len() + self.dev.len() + self.test.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Parses JSONL examples. The dataset is curated, so any bad line is an error
/// that names the file and line; nothing is skipped silently.
pub fn parse_examples(bytes: &[u8], path: &Path) -> Result<Vec<Example>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
        anyhow::anyhow!("{}:{line}: not valid UTF-8; re-save the file as UTF-8", path.display())
    })?;
    let mut examples = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let at = || format!("{}:{line_no}", path.display());
        let value: Value = serde_json::from_str(line)
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
