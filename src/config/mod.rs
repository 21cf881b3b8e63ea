//! Configuration: the YAML schema ([`schema`]), `${VAR}` expansion ([`expand`]), environment
//! overrides ([`env`]) and validation into the immutable [`crate::runtime::Runtime`] ([`compile`]).
//!
//! Loading never panics and never stops at the first problem: every error carries the YAML
//! path of the value at fault, and `--check` prints them all.

pub mod compile;
pub mod discover;
pub mod env;
pub mod expand;
pub mod host;
pub mod inference;
pub mod limits;
pub mod lora;
pub mod ping;
pub mod pool;
pub mod schema;
pub mod units;
pub mod upstream;

use crate::runtime::Runtime;
use std::fmt;

/// Looks up an environment variable; tests pass a closure instead of touching the process env.
pub type Env<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// One problem in the configuration, with the YAML path of the value at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// All the problems found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// Reads and compiles the file at `path`.
pub fn load_file(path: &str, env: &Env) -> Result<Runtime, ConfigErrors> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::new("", format!("cannot read config file {path}: {e}")))?;
    load_str(&text, env)
}

/// Parses, expands, overrides and compiles a YAML document.
pub fn load_str(text: &str, env: &Env) -> Result<Runtime, ConfigErrors> {
    let mut tree: serde_yaml::Value = if text.trim().is_empty() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        serde_yaml::from_str(text).map_err(|e| ConfigError::new("", format!("invalid YAML: {e}")))?
    };
    if tree.is_null() {
        tree = serde_yaml::Value::Mapping(Default::default());
    }
    let mut errors = Vec::new();
    expand::expand_tree(&mut tree, "", env, &mut errors);
    let file: schema::FileConfig = match serde_path_to_error::deserialize(tree) {
        Ok(f) => f,
        Err(e) => {
            let mut path = e.path().to_string();
            if path == "." {
                path.clear();
            }
            let message = clean_serde_message(&e.inner().to_string());
            // serde_path_to_error ends the path with the unknown field itself: name its parent.
            if message.starts_with("unknown field") {
                if let Some(i) = path.rfind('.') {
                    path.truncate(i);
                }
            }
            errors.push(ConfigError::new(path, message));
            return Err(ConfigErrors(errors));
        }
    };
    let file = env::apply_overrides(file, env, &mut errors);
    let runtime = compile::compile(file, &mut errors);
    if errors.is_empty() {
        runtime.ok_or_else(|| ConfigErrors(vec![ConfigError::new("", "invalid configuration")]))
    } else {
        Err(ConfigErrors(errors))
    }
}

/// serde says "unknown field `modles`, expected one of `a`, `b`": keep it, but quote like YAML.
fn clean_serde_message(msg: &str) -> String {
    let msg = msg.replace('`', "\"");
    // serde_yaml appends " at line L column C" which points into the expanded tree, not the file.
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    }
}
