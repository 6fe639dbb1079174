//! Text from the file as it appears in messages: control and invisible characters escaped, and
//! at most [`ECHO_CHARS`] characters, so a message stays short and on one line whatever the file
//! holds (a 10 MB label, a NUL, a terminal escape sequence).

use std::fmt;

/// Characters of an input echoed before it is cut (`…` and its length in bytes follow).
pub const ECHO_CHARS: usize = 64;

/// `s` between double quotes: `"abc"`, or `"abc…" (123456 bytes)` when cut.
pub(crate) fn quoted(s: &str) -> Echo<'_> {
    Echo { s, quote: true }
}

/// `s` without quotes (key and section names): `abc`, or `abc… (123456 bytes)` when cut.
pub(crate) fn plain(s: &str) -> Echo<'_> {
    Echo { s, quote: false }
}

pub(crate) struct Echo<'a> {
    s: &'a str,
    quote: bool,
}

/// Characters that would break a one-line message or hide what it says.
pub(crate) fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        if self.quote {
            f.write_char('"')?;
        }
        let mut chars = self.s.chars();
        for c in chars.by_ref().take(ECHO_CHARS) {
            if is_unprintable(c) {
                write!(f, "{}", c.escape_debug())?;
            } else {
                f.write_char(c)?;
            }
        }
        let cut = chars.next().is_some();
        if cut {
            f.write_char('…')?;
        }
        if self.quote {
            f.write_char('"')?;
        }
        if cut {
            write!(f, " ({} bytes)", self.s.len())?;
        }
        Ok(())
    }
}

/// The first unprintable character of `s` and its 1-based position, for "what and where".
pub(crate) fn first_unprintable(s: &str) -> Option<(usize, char)> {
    s.chars()
        .enumerate()
        .find(|(_, c)| is_unprintable(*c))
        .map(|(i, c)| (i + 1, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_unchanged_long_text_is_cut() {
        assert_eq!(quoted("abc").to_string(), "\"abc\"");
        assert_eq!(plain("abc").to_string(), "abc");
        let long = "x".repeat(10_000_000);
        let shown = quoted(&long).to_string();
        assert_eq!(
            shown,
            format!("\"{}…\" (10000000 bytes)", "x".repeat(ECHO_CHARS))
        );
        let exact = "y".repeat(ECHO_CHARS);
        assert_eq!(plain(&exact).to_string(), exact);
    }

    #[test]
    fn control_and_invisible_characters_are_escaped() {
        assert_eq!(
            quoted("a\0b\n\u{1b}[2J").to_string(),
            "\"a\\0b\\n\\u{1b}[2J\""
        );
        assert_eq!(plain("x\u{202e}y").to_string(), "x\\u{202e}y");
        assert_eq!(first_unprintable("ab\tc"), Some((3, '\t')));
        assert_eq!(first_unprintable("abc é"), None);
    }
}
