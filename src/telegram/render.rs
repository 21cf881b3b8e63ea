//! Final-message formatting. Models answer in Markdown; Telegram's MarkdownV2 would need a
//! dozen characters escaped and breaks on ordinary model output, while HTML needs only
//! `<>&`. So: escape everything, and turn the three Markdown constructs that matter most in
//! answers (code blocks, inline code, bold) into tags. Tags are always emitted in balanced
//! pairs; an unmatched marker stays literal text. If Telegram still rejects the entities, the
//! caller resends the plain text.

/// Escapes the three characters Telegram's HTML mode reserves.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c => out.push(c),
        }
    }
    out
}

/// Splits on `marker` into (outside, inside, outside, ...) segments; an odd trailing marker
/// is glued back onto the last outside segment so it stays literal.
fn pairs<'a>(text: &'a str, marker: &str) -> Vec<(bool, std::borrow::Cow<'a, str>)> {
    let pieces: Vec<&str> = text.split(marker).collect();
    let balanced = pieces.len() % 2 == 1;
    let mut out: Vec<(bool, std::borrow::Cow<'a, str>)> = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let inside = i % 2 == 1;
        if inside && !balanced && i == pieces.len() - 1 {
            // Unmatched opening marker: literal, joined to what came before.
            let literal = format!("{marker}{piece}");
            match out.last_mut() {
                Some((false, prev)) => prev.to_mut().push_str(&literal),
                _ => out.push((false, literal.into())),
            }
        } else {
            out.push((inside, (*piece).into()));
        }
    }
    out
}

/// Markdown-ish answer text to Telegram HTML.
pub fn html(text: &str) -> String {
    let mut out = String::new();
    for (code, segment) in pairs(text, "```") {
        if code {
            out.push_str(&code_block(&segment));
        } else {
            out.push_str(&inline(&segment));
        }
    }
    out
}

/// A fenced block; a first line without spaces is the language tag.
fn code_block(body: &str) -> String {
    let (lang, code) = match body.split_once('\n') {
        Some((first, rest)) if !first.trim().contains(' ') => (first.trim(), rest),
        _ => ("", body),
    };
    let code = escape(code.trim_end_matches('\n'));
    if lang.is_empty() || !lang.chars().all(|c| c.is_ascii_alphanumeric() || "+-_#".contains(c)) {
        format!("<pre>{code}</pre>")
    } else {
        format!("<pre><code class=\"language-{lang}\">{code}</code></pre>")
    }
}

fn inline(text: &str) -> String {
    let mut out = String::new();
    for (code, segment) in pairs(text, "`") {
        if code && !segment.is_empty() {
            out.push_str(&format!("<code>{}</code>", escape(&segment)));
        } else if code {
            out.push_str("``");
        } else {
            for (bold, s) in pairs(&segment, "**") {
                if bold && !s.trim().is_empty() {
                    out.push_str(&format!("<b>{}</b>", escape(&s)));
                } else if bold {
                    out.push_str(&format!("**{}**", escape(&s)));
                } else {
                    out.push_str(&escape(&s));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_reserved_characters() {
        assert_eq!(escape("a < b && c > d"), "a &lt; b &amp;&amp; c &gt; d");
        assert_eq!(html("x<y"), "x&lt;y");
    }

    #[test]
    fn converts_code_and_bold() {
        assert_eq!(html("use `a<b` **now**"), "use <code>a&lt;b</code> <b>now</b>");
        assert_eq!(
            html("see:\n```rust\nfn f() {}\n```\ndone"),
            "see:\n<pre><code class=\"language-rust\">fn f() {}</code></pre>\ndone"
        );
        assert_eq!(html("```\nplain <x>\n```"), "<pre>plain &lt;x&gt;</pre>");
    }

    #[test]
    fn unmatched_markers_stay_literal() {
        assert_eq!(html("a ** b"), "a ** b");
        assert_eq!(html("2 * 3 `x"), "2 * 3 `x");
        assert_eq!(html("start ```py\ncut"), "start ```py\ncut");
        assert_eq!(html("``"), "``");
    }
}
