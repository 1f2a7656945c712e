//! Splitting a unit's bytes into lines without ever holding more than
//! `max_line_bytes` of one line.

use std::io::{self, BufRead, BufReader, Read};

use super::{SourceError, as_source_error};

/// One line of a unit, or the reason it cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// `number` is 1-based; the trailing `\n` or `\r\n` is stripped.
    Line {
        number: u64,
        text: String,
    },
    Bad {
        number: u64,
        problem: LineProblem,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// Longer than `max_line_bytes`; skipped without being held in memory.
    TooLong {
        bytes: u64,
    },
    InvalidUtf8,
    /// The unit ended in a broken compressed stream; nothing more is read from it.
    Truncated {
        detail: String,
    },
}

/// Bytes read from the unit at a time.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// The lines of one unit. Empty (or blank) lines are skipped but counted, so
/// numbers match what an editor shows. A UTF-8 byte order mark at the start
/// is dropped. After a `Truncated` line or a [`SourceError`] the iterator ends.
pub struct Lines<R> {
    reader: BufReader<R>,
    max_line_bytes: usize,
    /// The number of the last line read.
    number: u64,
    line: Vec<u8>,
    finished: bool,
}

impl<R: Read> Lines<R> {
    pub fn new(reader: R, max_line_bytes: usize) -> Self {
        Self {
            reader: BufReader::with_capacity(READ_BUFFER_BYTES, reader),
            max_line_bytes,
            number: 0,
            line: Vec::new(),
            finished: false,
        }
    }

    /// Reads the next line into `self.line`. Returns its length in bytes
    /// (without `\n`), whether it was longer than the limit (then `self.line`
    /// holds only its start), and whether anything was read at all.
    fn read_line(&mut self) -> io::Result<Option<(u64, bool)>> {
        self.line.clear();
        let mut bytes: u64 = 0;
        let mut too_long = false;
        let mut last_byte = None;
        // One byte more than the limit, for a `\r` before the `\n`.
        let keep = self.max_line_bytes.saturating_add(1);
        loop {
            let available = match self.reader.fill_buf() {
                Ok(available) => available,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            };
            if available.is_empty() {
                if bytes == 0 {
                    return Ok(None);
                }
                break;
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let content = &available[..newline.unwrap_or(available.len())];
            if let Some(&last) = content.last() {
                last_byte = Some(last);
            }
            bytes += content.len() as u64;
            if !too_long {
                if self.line.len() + content.len() > keep {
                    too_long = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(content);
                }
            }
            let consumed = newline.map_or(content.len(), |at| at + 1);
            self.reader.consume(consumed);
            if newline.is_some() {
                return Ok(Some((self.strip_cr(bytes, last_byte, too_long), too_long)));
            }
        }
        Ok(Some((self.strip_cr(bytes, last_byte, too_long), too_long)))
    }

    fn strip_cr(&mut self, bytes: u64, last_byte: Option<u8>, too_long: bool) -> u64 {
        if bytes > 0 && last_byte == Some(b'\r') {
            if !too_long {
                self.line.pop();
            }
            bytes - 1
        } else {
            bytes
        }
    }

    fn failed(&mut self, error: io::Error) -> Result<LineEvent, SourceError> {
        self.finished = true;
        match as_source_error(&error) {
            Some(source_error) => Err(source_error),
            None => Ok(LineEvent::Bad {
                number: self.number + 1,
                problem: LineProblem::Truncated {
                    detail: format!("the compressed data ends early or is corrupt ({error})"),
                },
            }),
        }
    }
}

impl<R: Read> Iterator for Lines<R> {
    type Item = Result<LineEvent, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished {
            let (bytes, too_long) = match self.read_line() {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.finished = true;
                    return None;
                }
                Err(error) => return Some(self.failed(error)),
            };
            self.number += 1;
            let number = self.number;
            if too_long || bytes > self.max_line_bytes as u64 {
                return Some(Ok(LineEvent::Bad { number, problem: LineProblem::TooLong { bytes } }));
            }
            let mut content = self.line.as_slice();
            if number == 1 {
                content = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(content);
            }
            if content.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(Ok(match std::str::from_utf8(content) {
                Ok(text) => LineEvent::Line { number, text: text.to_string() },
                Err(_) => LineEvent::Bad { number, problem: LineProblem::InvalidUtf8 },
            }));
        }
        None
    }
}
