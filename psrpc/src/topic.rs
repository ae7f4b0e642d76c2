//! [`Topic`]: the one topic type every call, subscription, registration and
//! publish takes.

use std::fmt;

/// The topic of a call, a subscription, a registration or a publish: the
/// ordered parts that follow the method name in its channels. Most methods
/// have none; a method declared with topics is served and called per topic
/// (`["us-east"]`, `["us-east", "node-7"]`).
///
/// Every function that takes a topic takes `impl Into<Topic>`, so a topic is
/// written as what it is:
///
/// ```
/// use psrpc::Topic;
///
/// assert!(Topic::from(()).is_none());                   // no topic
/// assert_eq!(Topic::from("eu"), Topic::new(["eu"]));    // one part
/// assert_eq!(Topic::from(["eu", "node-7"]).parts(), ["eu", "node-7"]);
/// assert_eq!(Topic::from(vec!["eu".to_string()]).to_string(), "eu");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Topic(Vec<String>);

impl Topic {
    /// No topic (as `()` and `Topic::default()`).
    pub const fn none() -> Self {
        Topic(Vec::new())
    }

    /// A topic of these parts, in order.
    pub fn new<I>(parts: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Topic(parts.into_iter().map(Into::into).collect())
    }

    /// Whether this is no topic.
    pub fn is_none(&self) -> bool {
        self.0.is_empty()
    }

    /// The parts, in order (empty for no topic).
    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// The parts, by value.
    pub fn into_parts(self) -> Vec<String> {
        self.0
    }
}

/// The parts joined by `.` (empty for no topic), as tools print a topic.
impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(p)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Topic").field(&self.0).finish()
    }
}

impl AsRef<[String]> for Topic {
    fn as_ref(&self) -> &[String] {
        &self.0
    }
}

/// No topic.
impl From<()> for Topic {
    fn from((): ()) -> Self {
        Topic::none()
    }
}

/// One part.
impl From<&str> for Topic {
    fn from(part: &str) -> Self {
        Topic(vec![part.to_owned()])
    }
}

/// One part.
impl From<String> for Topic {
    fn from(part: String) -> Self {
        Topic(vec![part])
    }
}

/// One part.
impl From<&String> for Topic {
    fn from(part: &String) -> Self {
        Topic(vec![part.clone()])
    }
}

/// These parts.
impl<const N: usize> From<[&str; N]> for Topic {
    fn from(parts: [&str; N]) -> Self {
        Topic::new(parts)
    }
}

/// These parts.
impl<const N: usize> From<[String; N]> for Topic {
    fn from(parts: [String; N]) -> Self {
        Topic(parts.into())
    }
}

/// These parts.
impl<const N: usize> From<&[String; N]> for Topic {
    fn from(parts: &[String; N]) -> Self {
        Topic(parts.to_vec())
    }
}

/// These parts.
impl From<Vec<String>> for Topic {
    fn from(parts: Vec<String>) -> Self {
        Topic(parts)
    }
}

/// These parts.
impl From<&Vec<String>> for Topic {
    fn from(parts: &Vec<String>) -> Self {
        Topic(parts.clone())
    }
}

/// These parts.
impl From<&[String]> for Topic {
    fn from(parts: &[String]) -> Self {
        Topic(parts.to_vec())
    }
}

/// The same topic.
impl From<&Topic> for Topic {
    fn from(topic: &Topic) -> Self {
        topic.clone()
    }
}

impl From<Topic> for Vec<String> {
    fn from(topic: Topic) -> Self {
        topic.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(t: impl Into<Topic>) -> Vec<String> {
        t.into().into_parts()
    }

    #[test]
    fn converts_from_every_form() {
        let eu = || vec!["eu".to_string()];
        let two = || vec!["eu".to_string(), "n7".to_string()];
        assert_eq!(parts(()), Vec::<String>::new());
        assert_eq!(parts(Topic::none()), Vec::<String>::new());
        assert_eq!(parts(Topic::default()), Vec::<String>::new());
        assert_eq!(parts("eu"), eu());
        assert_eq!(parts(String::from("eu")), eu());
        let owned = String::from("eu");
        assert_eq!(parts(&owned), eu());
        assert_eq!(parts(["eu", "n7"]), two());
        assert_eq!(parts([String::from("eu"), String::from("n7")]), two());
        assert_eq!(parts(&[String::from("eu"), String::from("n7")]), two());
        assert_eq!(parts(two()), two());
        let v = two();
        assert_eq!(parts(&v), two());
        assert_eq!(parts(two().as_slice()), two());
        let t = Topic::new(["eu", "n7"]);
        assert_eq!(parts(&t), two());
        assert_eq!(parts(Topic::new(two())), two());
        // The empty forms callers write for "no topic" infer their type.
        assert_eq!(parts(Vec::new()), Vec::<String>::new());
        assert_eq!(parts(&[]), Vec::<String>::new());
        assert!(Topic::none().is_none() && !Topic::from("eu").is_none());
    }

    #[test]
    fn displays_its_parts_joined_by_dots() {
        assert_eq!(Topic::none().to_string(), "");
        assert_eq!(Topic::from(["eu", "n7"]).to_string(), "eu.n7");
    }
}
