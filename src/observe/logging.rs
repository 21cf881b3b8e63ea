//! The process logger: env_logger's filter and format behind a wrapper that passes every
//! record's text through [`redact`] first, whatever its level or origin (our code, Pingora,
//! reqwest, hyper, rustls), and a panic hook that does the same for panic messages.
//! See docs/security.md for what is filtered and why.

use super::redact::redact;
use log::{Log, Metadata, Record};

/// env_logger's logger, redacting.
struct Redacting(env_logger::Logger);

impl Log for Redacting {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.0.enabled(record.metadata()) {
            return;
        }
        // A message without arguments is a literal in our code or a dependency's: it still
        // goes through the filter (a literal could quote a header).
        let text = match record.args().as_str() {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(record.args().to_string()),
        };
        let clean = redact(&text);
        self.0.log(
            &Record::builder()
                .args(format_args!("{clean}"))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush()
    }
}

/// Installs the redacting logger (`RUST_LOG` wins over `default_level`) on stderr and the
/// redacting panic hook. A second call changes nothing.
pub fn init(default_level: &str) {
    init_to(default_level, None)
}

/// [`init`], writing into `files` (`log.dir`) instead of stderr when given.
pub fn init_to(default_level: &str, files: Option<super::daily_file::SharedDailyFile>) {
    let env = env_logger::Env::default().default_filter_or(default_level);
    let mut builder = env_logger::Builder::from_env(env);
    builder.format_timestamp_millis();
    if let Some(f) = files {
        builder.target(env_logger::Target::Pipe(Box::new(f)));
    }
    let logger = builder.build();
    let max = logger.filter();
    if log::set_boxed_logger(Box::new(Redacting(logger))).is_ok() {
        log::set_max_level(max);
        install_panic_hook();
    }
}

/// Panic messages can quote what was being handled: they are redacted like log lines.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let text = info.to_string();
        eprintln!("{}", redact(&text));
    }));
}
