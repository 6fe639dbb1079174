//! Key names: numbered keys (`VirtualTokenNNLabel`, `ProviderNNLibrary`) and the "did you mean"
//! suggestion for a key that is not known.

use super::echo::ECHO_CHARS;

/// Levenshtein distance, ASCII case-insensitive.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate, if it is close enough to be a plausible misspelling.
pub(crate) fn suggest(key: &str, candidates: &[String]) -> Option<String> {
    // A key this long is no misspelling, and the distance would cost its length squared.
    if key.len() > ECHO_CHARS {
        return None;
    }
    candidates
        .iter()
        .map(|c| (distance(key, c), c))
        .filter(|(d, c)| *d <= 3 && *d * 3 <= c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.clone())
}

/// `<prefix><digits><suffix>` with at least one digit: (digits, lowercased suffix).
pub(crate) fn numbered<'k>(key: &'k str, prefix: &str) -> Option<(&'k str, String)> {
    if key.len() <= prefix.len() || !key.is_char_boundary(prefix.len()) {
        return None;
    }
    if !key[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = &key[prefix.len()..];
    let n = rest.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    Some((&rest[..n], rest[n..].to_ascii_lowercase()))
}

/// The number of a numbered key: at least two digits, fitting a u32.
pub(crate) fn index(digits: &str, example: &str) -> Result<u32, String> {
    if digits.len() < 2 {
        return Err(format!(
            "the number in the key must have at least two digits (e.g. {example})"
        ));
    }
    digits.parse::<u32>().map_err(|_| {
        format!(
            "number {} in the key is too large",
            super::echo::plain(digits)
        )
    })
}

/// The digits in a key, for suggestions (`VirtualToken01Lable` → "01").
pub(crate) fn digits_in(key: &str) -> String {
    let d: String = key
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .take(10)
        .collect();
    if d.len() >= 2 {
        d
    } else {
        "00".into()
    }
}
