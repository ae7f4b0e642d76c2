//! What can go wrong, and the exit code of each class.

use std::fmt;

/// The exit codes of `psrpc`, one per class of failure. They are stable:
/// scripts may test them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// 1: a failure of the tool itself.
    Internal = 1,
    /// 2: bad input: a usage error, an unknown service or method, invalid
    /// JSON, JSON that does not fit the message.
    Input = 2,
    /// 3: a proto file that fails to parse or resolve.
    Proto = 3,
    /// 4: the bus is unreachable or failed.
    Bus = 4,
    /// 5: the call's deadline passed (`deadline_exceeded`).
    Timeout = 5,
    /// 6: no server took the call (`unavailable`).
    Unavailable = 6,
    /// 7: the server answered with an error (any other code).
    Remote = 7,
    /// 8: the call or stream was canceled (`canceled`).
    Canceled = 8,
}

/// The exit codes as `--help` shows them.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  internal failure of the tool
  2  bad input: usage, unknown service or method, invalid JSON, JSON that does not fit the message
  3  a proto file that fails to parse (the message names the file and line)
  4  the bus is unreachable (after --connect-timeout) or failed
  5  the call timed out (deadline_exceeded)
  6  no server took the call (unavailable)
  7  the server answered with an error (its code and message are printed on stderr)
  8  the call or stream was canceled (canceled)";

/// A failure: its class, a message and, for errors from a server, the
/// psrpc error code and details.
#[derive(Debug)]
pub struct CliError {
    /// The class (exit code).
    pub class: Class,
    /// What happened.
    pub message: String,
    /// The psrpc error code, for errors of a call.
    pub code: Option<String>,
    /// Error details as JSON, for errors of a call.
    pub details: Vec<serde_json::Value>,
}

impl CliError {
    /// A failure of `class` with `message`.
    pub fn new(class: Class, message: impl Into<String>) -> Self {
        CliError {
            class,
            message: message.into(),
            code: None,
            details: Vec::new(),
        }
    }

    /// Bad input.
    pub fn input(message: impl Into<String>) -> Self {
        Self::new(Class::Input, message)
    }

    /// A bus failure.
    pub fn bus(message: impl Into<String>) -> Self {
        Self::new(Class::Bus, message)
    }

    /// The class of a psrpc error code.
    pub fn class_of_code(code: &str) -> Class {
        match code {
            "deadline_exceeded" => Class::Timeout,
            "unavailable" => Class::Unavailable,
            "canceled" => Class::Canceled,
            _ => Class::Remote,
        }
    }

    /// An error of a call, with its code and details.
    pub fn call(code: &str, message: &str, details: Vec<serde_json::Value>) -> Self {
        CliError {
            class: Self::class_of_code(code),
            message: message.to_owned(),
            code: Some(code.to_owned()),
            details,
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> u8 {
        self.class as u8
    }

    /// The error as one JSON object (code, message, details).
    pub fn to_json(&self) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        if let Some(c) = &self.code {
            o.insert("code".into(), c.clone().into());
        }
        o.insert("message".into(), self.message.clone().into());
        if !self.details.is_empty() {
            o.insert("details".into(), self.details.clone().into());
        }
        o.into()
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.code {
            Some(c) => write!(f, "error: {c}: {}", self.message)?,
            None => write!(f, "error: {}", self.message)?,
        }
        for d in &self.details {
            write!(f, "\n  detail: {d}")?;
        }
        Ok(())
    }
}

/// Results of the tool.
pub type CliResult<T> = Result<T, CliError>;
