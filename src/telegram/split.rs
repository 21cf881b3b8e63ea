//! Splits long answers into Telegram-sized messages. Telegram counts UTF-16 code units
//! (an emoji is two), and a part should end where a reader expects a pause: a paragraph,
//! else a line, else a sentence, else a word; a hard cut only for one giant word.

/// Telegram's limit for message text, in UTF-16 units after entity parsing.
pub const MESSAGE_LIMIT: usize = 4096;

pub fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// The longest prefix of `text` that fits in `limit` UTF-16 units, as a byte index on a char
/// boundary (a surrogate pair is never cut).
fn fit(text: &str, limit: usize) -> usize {
    let mut units = 0;
    for (i, c) in text.char_indices() {
        units += c.len_utf16();
        if units > limit {
            return i;
        }
    }
    text.len()
}

/// Boundaries in order of preference: (pattern, keep the pattern in the earlier part).
const BOUNDARIES: &[&str] = &["\n\n", "\n", ". ", "! ", "? ", "。", "; ", " "];

/// Where to cut `window` (which is too short to hold the rest): after the last boundary of
/// the best kind found in its second half, so parts are not tiny; else at the window end.
fn cut_point(window: &str) -> usize {
    let min = window.len() / 2;
    for b in BOUNDARIES {
        if let Some(pos) = window.rfind(b) {
            let end = pos + b.len();
            if end > min {
                return end;
            }
        }
    }
    window.len()
}

/// Splits `text` into parts of at most `limit` UTF-16 units, trimming the whitespace at each
/// cut. Blank text gives no parts.
pub fn split(text: &str, limit: usize) -> Vec<String> {
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let window_end = fit(rest, limit);
        if window_end == rest.len() {
            parts.push(rest.to_string());
            break;
        }
        let mut end = cut_point(&rest[..window_end]);
        if end == 0 {
            // limit smaller than one character: still make progress.
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let part = rest[..end].trim_end();
        if !part.is_empty() {
            parts.push(part.to_string());
        }
        rest = rest[end..].trim_start();
    }
    parts
}

/// A preview that fits one message: the text, or its head and "…" when longer.
pub fn preview(text: &str, limit: usize) -> String {
    if utf16_len(text) <= limit {
        return text.to_string();
    }
    let end = fit(text, limit.saturating_sub(1));
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(parts: &[String], limit: usize) {
        for p in parts {
            assert!(utf16_len(p) <= limit, "part too long: {}", utf16_len(p));
            assert!(!p.is_empty());
        }
    }

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split("  hello  ", 10), vec!["hello"]);
        assert!(split("   ", 10).is_empty());
    }

    #[test]
    fn prefers_paragraphs_then_sentences() {
        let text = "First paragraph here.\n\nSecond one. It goes on and on.";
        let parts = split(text, 40);
        assert_eq!(parts[0], "First paragraph here.");
        assert_eq!(parts[1], "Second one. It goes on and on.");

        let text = "One sentence here. Another sentence here. Third!";
        let parts = split(text, 30);
        check(&parts, 30);
        assert_eq!(parts[0], "One sentence here.");
    }

    #[test]
    fn counts_utf16_units_and_never_splits_a_surrogate_pair() {
        let text = "😀".repeat(10); // 20 UTF-16 units, no boundary at all
        let parts = split(&text, 7);
        check(&parts, 7);
        assert_eq!(parts.concat(), text);
        assert_eq!(parts[0], "😀😀😀");
    }

    #[test]
    fn long_answer_keeps_all_words() {
        let para = "word ".repeat(300); // 1500 chars
        let text = format!("{para}\n\n{para}\n\n{para}\n\n{para}");
        let parts = split(&text, MESSAGE_LIMIT);
        check(&parts, MESSAGE_LIMIT);
        assert_eq!(parts.len(), 2);
        let words: usize = parts.iter().map(|p| p.split_whitespace().count()).sum();
        assert_eq!(words, 1200);
    }

    #[test]
    fn preview_fits() {
        assert_eq!(preview("abc", 5), "abc");
        let p = preview(&"x".repeat(10), 5);
        assert_eq!(p, "xxxx…");
        assert!(utf16_len(&p) <= 5);
    }
}
