//! Printing results: plain text for people, one JSON document for scripts. Results go to
//! stdout; progress and diagnostics go to stderr.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::args::{GlobalArgs, OutputFormat};

/// Where results and progress go, per the global options.
#[derive(Debug, Clone)]
pub struct Output {
    format: OutputFormat,
    quiet: bool,
    /// Prints nothing at all: a command that runs another for its effect alone.
    muted: bool,
}

impl Output {
    /// From the global options.
    pub fn new(global: &GlobalArgs) -> Self {
        Self {
            format: global.output,
            quiet: global.quiet,
            muted: false,
        }
    }

    /// The same, printing nothing: for running a command as one step of another, which
    /// reports the step itself.
    pub fn muted(&self) -> Self {
        Self {
            muted: true,
            ..self.clone()
        }
    }

    /// Whether JSON was asked for.
    pub fn is_json(&self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Print a result: `plain` as text, or `json` as one JSON document.
    pub fn result(&self, plain: impl FnOnce() -> String, json: &impl Serialize) {
        if self.muted {
            return;
        }
        match self.format {
            OutputFormat::Plain => {
                let text = plain();
                if !text.is_empty() {
                    println!("{text}");
                }
            }
            OutputFormat::Json => match serde_json::to_string_pretty(json) {
                Ok(j) => println!("{j}"),
                Err(e) => eprintln!("error: cannot encode the result as JSON: {e}"),
            },
        }
    }

    /// An event in a stream (a foreground node saying it serves): text, or one compact JSON
    /// line that a script can read with a line reader.
    pub fn event(&self, plain: impl FnOnce() -> String, json: &impl Serialize) {
        if self.muted {
            return;
        }
        match self.format {
            OutputFormat::Plain => println!("{}", plain()),
            OutputFormat::Json => match serde_json::to_string(json) {
                Ok(j) => println!("{j}"),
                Err(e) => eprintln!("error: cannot encode the result as JSON: {e}"),
            },
        }
    }

    /// A progress note on stderr (not in quiet or JSON mode).
    pub fn note(&self, text: impl AsRef<str>) {
        if !self.quiet && !self.muted && !self.is_json() {
            eprintln!("{}", text.as_ref());
        }
    }

    /// A spinner on stderr while waiting, if stderr is a terminal and output is for people.
    pub fn spinner(&self, message: impl Into<String>) -> Option<ProgressBar> {
        if self.quiet || self.muted || self.is_json() || !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new_spinner();
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
            bar.set_style(style);
        }
        bar.set_message(message.into());
        bar.enable_steady_tick(Duration::from_millis(100));
        Some(bar)
    }
}

/// Text from the authority (a requester's note, attributes) made safe for a terminal:
/// control characters are escaped, so a note cannot rewrite what the admin sees.
pub(crate) fn clean(text: &str) -> String {
    let mut cleaned = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            cleaned.extend(c.escape_default());
        } else {
            cleaned.push(c);
        }
    }
    cleaned
}

/// Attributes as `k=v` pairs joined by `sep`, made safe for a terminal.
pub(crate) fn attribute_list(attributes: &BTreeMap<String, String>, sep: &str) -> String {
    attributes
        .iter()
        .map(|(k, v)| format!("{}={}", clean(k), clean(v)))
        .collect::<Vec<_>>()
        .join(sep)
}
