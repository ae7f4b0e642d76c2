//! Printing what a scenario does.

use std::io::Write;

/// Prints what a scenario does, one line at a time, prefixed with the
/// scenario's name; or nothing ([`Narrator::quiet`]).
#[derive(Debug, Clone)]
pub struct Narrator {
    prefix: Option<String>,
}

impl Narrator {
    /// Prints lines as `[name] line`.
    pub fn new(name: &str) -> Self {
        Narrator {
            prefix: Some(format!("[{name}]")),
        }
    }

    /// Prints nothing.
    pub fn quiet() -> Self {
        Narrator { prefix: None }
    }

    /// Prints one line (flushed at once, so that a parent process reading
    /// the output sees it).
    pub fn say(&self, line: impl AsRef<str>) {
        if let Some(p) = &self.prefix {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{p} {}", line.as_ref());
            let _ = out.flush();
        }
    }
}
