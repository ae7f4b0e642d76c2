//! Printing what a scenario does.

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

    /// Prints one line (standard output is line-buffered, so a parent
    /// process reading it sees each line at once; in tests it is captured).
    pub fn say(&self, line: impl AsRef<str>) {
        if let Some(p) = &self.prefix {
            println!("{p} {}", line.as_ref());
        }
    }
}
