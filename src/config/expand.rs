//! `${VAR}` and `${VAR:-default}` expansion inside YAML string values, done on the parsed
//! tree so an error can name the YAML path of the value that referred to a missing variable.
//! `$$` stands for a literal `$`.

use super::{ConfigError, Env};
use serde_yaml::Value;

/// Expands every string scalar below `value`; collects one error per missing variable.
pub fn expand_tree(value: &mut Value, path: &str, env: &Env, errors: &mut Vec<ConfigError>) {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                match expand_str(s, env) {
                    Ok(out) => *s = out,
                    Err(msg) => errors.push(ConfigError::new(path, msg)),
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_tree(item, &format!("{path}[{i}]"), env, errors);
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = k.as_str().unwrap_or("?");
                let child = if path.is_empty() { key.to_string() } else { format!("{path}.{key}") };
                expand_tree(v, &child, env, errors);
            }
        }
        Value::Tagged(t) => expand_tree(&mut t.value, path, env, errors),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Expands one string. The error message names the variable, never its value.
pub fn expand_str(input: &str, env: &Env) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or_else(|| format!("unterminated \"${{\" in {input:?}"))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid variable name {name:?} in \"${{{inner}}}\""));
            }
            match (env(name), default) {
                (Some(v), _) if !v.is_empty() || default.is_none() => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable {name} is not set")),
                (Some(v), None) => out.push_str(&v),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("alpha".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands() {
        assert_eq!(expand_str("x${A}y", &env), Ok("xalphay".into()));
        assert_eq!(expand_str("${B:-dflt}", &env), Ok("dflt".into()));
        assert_eq!(expand_str("${EMPTY:-dflt}", &env), Ok("dflt".into()));
        assert_eq!(expand_str("$$HOME $5", &env), Ok("$HOME $5".into()));
        assert_eq!(expand_str("${B}", &env), Err("environment variable B is not set".into()));
        assert!(expand_str("${A", &env).is_err());
    }

    #[test]
    fn tree_errors_carry_paths() {
        let mut v: Value = serde_yaml::from_str("keys:\n  - { key: \"${NOPE}\" }\n").unwrap();
        let mut errors = Vec::new();
        expand_tree(&mut v, "", &env, &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].to_string(), "keys[0].key: environment variable NOPE is not set");
    }
}
