//! Prometheus text exposition, as far as the fleet reads it from replicas (the inference
//! scrape, `inference/scrape.rs`; LoRA learning, `lora/parse.rs`): one splitter of sample
//! lines into name, label set and value, which quoted label values cannot fool.

/// One sample line, `name{labels} value [timestamp]`, split at its name; the rest is read on
/// demand, so a reader only pays for (and only fails on) the series it wants.
#[derive(Debug, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    rest: &'a str,
}

impl<'a> Sample<'a> {
    /// The label set (between the braces, unparsed; `""` for none) and the value field.
    pub fn split(&self) -> Result<(&'a str, &'a str), &'static str> {
        let (labels, rest) = match self.rest.strip_prefix('{') {
            Some(after) => split_labels(after).ok_or("unterminated labels")?,
            None => ("", self.rest),
        };
        Ok((labels, rest.split_whitespace().next().unwrap_or("")))
    }
}

/// A value field as a finite number.
pub fn number(value: &str) -> Option<f64> {
    value.parse().ok().filter(|v: &f64| v.is_finite())
}

/// The sample lines of `text`, comments and blank lines skipped.
pub fn samples(text: &str) -> impl Iterator<Item = Sample<'_>> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|line| {
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        Sample { name: &line[..name_end], rest: &line[name_end..] }
    })
}

/// `labels} value…` → (`labels`, `value…`): the brace that closes the label set is the first
/// one outside quotes.
fn split_labels(s: &str) -> Option<(&str, &str)> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some((&s[..i], &s[i + 1..])),
            _ => {}
        }
    }
    None
}

/// `a="x",b="y\"z"` → [(a, x), (b, y"z)].
pub fn label_pairs(labels: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = labels.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=').ok_or("label without a value")?;
        let after = after.trim_start().strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".into()),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        out.push((name.trim().to_string(), value));
        rest = after[end + 1..].trim_start().trim_start_matches(',').trim_start();
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_into_name_labels_and_value() {
        let text = "# HELP x y\n\nup 1\nm{a=\"x} y\",b=\"q\\\"}\"} 2.5 1700000000\nbad{a=\"x\" 3\n";
        let got: Vec<_> = samples(text).collect();
        assert_eq!(got.iter().map(|s| s.name).collect::<Vec<_>>(), ["up", "m", "bad"]);
        assert_eq!(got[0].split(), Ok(("", "1")));
        let (labels, value) = got[1].split().unwrap();
        assert_eq!(value, "2.5");
        assert_eq!(got[2].split(), Err("unterminated labels"));
        let pairs = label_pairs(labels).unwrap();
        assert_eq!(pairs, vec![("a".into(), "x} y".into()), ("b".into(), "q\"}".into())]);
        assert_eq!(number("NaN"), None);
        assert_eq!(number("0.5"), Some(0.5));
    }
}
