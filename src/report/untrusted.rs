//! Text that came from logs, made inert for GitHub.
//!
//! Customer messages, model outputs, metric feedback and the names and notes
//! built from them end up in `REPORT.md`, the PR body and the job summary.
//! GitHub gives much plain text a meaning: `@org/team` notifies a team,
//! `#12`, `GH-12`, `owner/repo#12` and a 7–40 character hex run link an issue
//! or a commit, `Closes #12` closes that issue when the PR merges, and
//! `![x](url)`, `[x](url)`, `<https://…>`, `https://…` and `www.…` become
//! images and links. [`neutralize`] is the one place that takes this meaning
//! away; every piece of log-derived text the report renders outside a code
//! block or code span goes through it (in `markdown.rs`, through `cell`).
//! Text inside a fenced code block or a code span is already inert on GitHub.
//!
//! The text must stay readable, so nothing is removed or replaced by a look-
//! alike: Markdown characters are backslash-escaped (the backslash does not
//! show), HTML characters become entities, and where GitHub matches a pattern
//! in plain characters a U+2060 WORD JOINER is inserted to break it. The word
//! joiner is invisible, has no width and allows no line break, so the text
//! reads and wraps as before; it is neither a word character nor a digit, so
//! `@`+joiner is no mention, `#`+joiner no issue, `https:/`+joiner+`/` no URL.

/// U+2060 WORD JOINER: invisible, zero-width, no line break.
pub const WORD_JOINER: char = '\u{2060}';

/// A commit SHA is linked from this many hex digits on.
const SHA_MIN: usize = 7;
/// … up to this many (a full SHA-1).
const SHA_MAX: usize = 40;

/// `text` as inline Markdown that GitHub shows as written and never makes
/// active: no mention, issue or commit reference (and so no closing keyword
/// that works), no link, image or autolink, no HTML.
///
/// - `&`, `<`, `>` become entities: no HTML, no `<https://…>` autolink, and a
///   log cannot close a `<details>` fold.
/// - `\`, `[` and `]` are backslash-escaped: `[x](url)`, `![x](url)`,
///   `[x][ref]` and footnotes need an unescaped `[`; with it gone `!` and `(`
///   mean nothing and need no escape.
/// - A word joiner goes after `@` before a letter or digit (`@user`,
///   `@org/team`, `owner/repo@sha`, an email's autolink), after `#` before a
///   digit (`#12`, `owner/repo#12`; `C#` and `issue #` stay as they are),
///   after `GH-` before a digit, after a `www` before `.`, and into every `://`
///   (`https:/`+joiner+`/`): GitHub's autolinker needs `://` whole.
/// - A hex run of 7 to 40 characters with a digit and a letter (what GitHub
///   links as a commit) gets a word joiner after every 6 characters, so no
///   piece is long enough to be linked on its own. Words without a digit
///   (`deadbeef`, `effaced`) or without a letter (numbers) are left alone.
///
/// Closing keywords (`close`, `fixes`, `resolved`, …) are left as words: they
/// act only on a reference, and every reference is broken.
///
/// Code spans inside the text (`` `like this` ``) are copied as they are:
/// nothing in them is active, and an escape there would show.
pub fn neutralize(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len() + text.len() / 8);
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '`' {
            let run = run_length(&chars, i, '`');
            match closing_backticks(&chars, i + run, run) {
                Some(close) => {
                    out.extend(&chars[i..close + run]);
                    i = close + run;
                }
                // An unmatched backtick run is literal text.
                None => {
                    out.extend(&chars[i..i + run]);
                    i += run;
                }
            }
            continue;
        }
        if is_word(c) && (i == 0 || !is_word(chars[i - 1])) {
            let end = i + chars[i..].iter().take_while(|&&c| is_word(c)).count();
            i = push_word(&chars, i, end, &mut out);
            continue;
        }
        let next = chars.get(i + 1).copied();
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\\' | '[' | ']' => {
                out.push('\\');
                out.push(c);
            }
            '@' if next.is_some_and(|n| n.is_ascii_alphanumeric()) => {
                out.push('@');
                out.push(WORD_JOINER);
            }
            '#' if next.is_some_and(|n| n.is_ascii_digit()) => {
                out.push('#');
                out.push(WORD_JOINER);
            }
            ':' if next == Some('/') && chars.get(i + 2) == Some(&'/') => {
                out.push_str(":/");
                out.push(WORD_JOINER);
                out.push('/');
                i += 3;
                continue;
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Letters, digits and `_`: what GitHub's patterns take as a word, so a hex
/// run inside a longer word is no commit.
fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Pushes the word `chars[start..end]`, broken where GitHub would link it,
/// and returns where to go on.
fn push_word(chars: &[char], start: usize, end: usize, out: &mut String) -> usize {
    let word = &chars[start..end];
    let at = |i: usize| chars.get(i).copied();
    if is_commit_like(word) {
        for (n, piece) in word.chunks(SHA_MIN - 1).enumerate() {
            if n > 0 {
                out.push(WORD_JOINER);
            }
            out.extend(piece);
        }
        return end;
    }
    let lower: String = word.iter().collect::<String>().to_ascii_lowercase();
    if lower == "gh" && at(end) == Some('-') && at(end + 1).is_some_and(|c| c.is_ascii_digit()) {
        out.extend(word);
        out.push('-');
        out.push(WORD_JOINER);
        return end + 1;
    }
    out.extend(word);
    if lower == "www" && at(end) == Some('.') {
        out.push(WORD_JOINER);
    }
    end
}

/// 7 to 40 hex digits with at least one digit and one letter.
fn is_commit_like(word: &[char]) -> bool {
    (SHA_MIN..=SHA_MAX).contains(&word.len())
        && word.iter().all(char::is_ascii_hexdigit)
        && word.iter().any(char::is_ascii_digit)
        && word.iter().any(char::is_ascii_alphabetic)
}

fn run_length(chars: &[char], from: usize, c: char) -> usize {
    chars[from..].iter().take_while(|&&x| x == c).count()
}

/// Where the backtick run of exactly `length` that closes a code span opened
/// before `from` starts (CommonMark), if there is one.
fn closing_backticks(chars: &[char], from: usize, length: usize) -> Option<usize> {
    let mut i = from;
    while i < chars.len() {
        if chars[i] == '`' {
            let run = run_length(chars, i, '`');
            if run == length {
                return Some(i);
            }
            i += run;
        } else {
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text as it reads: word joiners are invisible.
    fn shown(text: &str) -> String {
        text.replace(WORD_JOINER, "")
    }

    const WJ: char = WORD_JOINER;

    #[test]
    fn mentions_do_not_notify() {
        assert_eq!(neutralize("ask @alice"), format!("ask @{WJ}alice"));
        assert_eq!(neutralize("@org/team please"), format!("@{WJ}org/team please"));
        assert_eq!(neutralize("mail a.b@example.com"), format!("mail a.b@{WJ}example.com"));
        assert_eq!(neutralize("owner/repo@1a2b3c4"), format!("owner/repo@{WJ}1a2b3c{WJ}4"));
    }

    #[test]
    fn references_do_not_link_so_closing_keywords_close_nothing() {
        assert_eq!(neutralize("Closes #1"), format!("Closes #{WJ}1"));
        assert_eq!(neutralize("fixes owner/repo#12."), format!("fixes owner/repo#{WJ}12."));
        assert_eq!(neutralize("Resolved GH-7"), format!("Resolved GH-{WJ}7"));
        assert_eq!(neutralize("see gh-7"), format!("see gh-{WJ}7"));
    }

    #[test]
    fn urls_and_autolinks_do_not_link() {
        assert_eq!(neutralize("go to https://e.vil/x"), format!("go to https:/{WJ}/e.vil/x"));
        assert_eq!(neutralize("www.e.vil"), format!("www{WJ}.e.vil"));
        assert_eq!(neutralize("<https://e.vil>"), format!("&lt;https:/{WJ}/e.vil&gt;"));
    }

    #[test]
    fn images_and_links_are_escaped() {
        assert_eq!(neutralize("![x](https://e.vil/p.png)"), format!("!\\[x\\](https:/{WJ}/e.vil/p.png)"));
        assert_eq!(neutralize("[click](/x)"), "\\[click\\](/x)");
        assert_eq!(neutralize("[x][ref] [^1]"), "\\[x\\]\\[ref\\] \\[^1\\]");
        // A backslash in the log cannot undo the escape of the bracket after it.
        assert_eq!(neutralize(r"\[x](/y)"), r"\\\[x\](/y)");
    }

    #[test]
    fn html_cannot_be_injected_or_close_a_fold() {
        assert_eq!(neutralize("</details><img src=x>"), "&lt;/details&gt;&lt;img src=x&gt;");
        assert_eq!(neutralize("&#64;x"), format!("&amp;#{WJ}64;x"));
    }

    #[test]
    fn commit_shas_are_broken_into_pieces_too_short_to_link() {
        assert_eq!(neutralize("at 1a2b3c4d5e6f"), format!("at 1a2b3c{WJ}4d5e6f"));
        assert_eq!(neutralize("1a2b3c4"), format!("1a2b3c{WJ}4"));
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let out = neutralize(sha);
        assert_eq!(shown(&out), sha);
        assert!(out.split(WJ).all(|piece| piece.len() < SHA_MIN), "{out}");
    }

    #[test]
    fn look_alikes_stay_as_they_are() {
        for text in [
            "<EMAIL_1>",
            "C# code",
            "issue #",
            "deadbeef effaced",
            "call 0123456 or 2026-11-27",
            "abc1234xyz",
            "1a2b3c",
            "a 64-char hash 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "mipro i2d1 · 4 @ 5",
            "ratio 3:2, path C:/x, http:/x",
        ] {
            let out = neutralize(text);
            assert_eq!(out.replace("&lt;", "<").replace("&gt;", ">"), text, "{text} → {out}");
        }
    }

    #[test]
    fn everything_reads_as_written() {
        let text = "Closes #1 @org/team ![x](https://e.vil/p.png) [click](https://e.vil) https://e.vil <https://e.vil> 1a2b3c4d5e6f";
        let out = neutralize(text);
        let unescaped = shown(&out).replace("\\[", "[").replace("\\]", "]").replace("&lt;", "<").replace("&gt;", ">");
        assert_eq!(unescaped, text);
    }

    #[test]
    fn code_spans_are_copied_as_they_are() {
        assert_eq!(neutralize("`queue`: expected `a[0] @x #1`"), "`queue`: expected `a[0] @x #1`");
        assert_eq!(neutralize("``a ` @b`` @c"), format!("``a ` @b`` @{WJ}c"));
        // An unmatched backtick opens nothing: what follows is neutralized.
        assert_eq!(neutralize("a ` @b"), format!("a ` @{WJ}b"));
    }
}
