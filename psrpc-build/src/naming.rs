//! Names: the wire names Go psrpc uses (protoc-gen-go's CamelCase for
//! method and service names) and the Rust names of generated items.

use heck::{ToShoutySnakeCase, ToSnakeCase, ToUpperCamelCase};
use proc_macro2::Span;
use syn::Ident;

/// protoc-gen-go's CamelCase, byte by byte: `get_stats` -> `GetStats`,
/// `Haberdasher_v1` -> `HaberdasherV1`, `a_1` -> `A_1`, `_x` -> `XX`.
/// This is the service and method name on the wire.
pub(crate) fn go_camel_case(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len() + 1);
    let mut i = 0;
    if b.first() == Some(&b'_') {
        out.push(b'X');
        i = 1;
    }
    while i < b.len() {
        let c = b[i];
        if c == b'_' && b.get(i + 1).is_some_and(u8::is_ascii_lowercase) {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            out.push(c);
            i += 1;
            continue;
        }
        out.push(c.to_ascii_uppercase());
        while let Some(&next) = b.get(i + 1).filter(|n| n.is_ascii_lowercase()) {
            out.push(next);
            i += 1;
        }
        i += 1;
    }
    // Only ASCII bytes were changed, so the result is still UTF-8.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// snake_case of a proto name, as prost-build names methods and modules.
pub(crate) fn snake(s: &str) -> String {
    s.to_snake_case()
}

/// UpperCamelCase of a proto name, as prost-build names types.
pub(crate) fn upper_camel(s: &str) -> String {
    s.to_upper_camel_case()
}

/// SCREAMING_SNAKE_CASE, for statics.
pub(crate) fn shouty(s: &str) -> String {
    s.to_shouty_snake_case()
}

/// Names that cannot be raw identifiers; prost-build appends `_` to them.
const NOT_RAW: &[&str] = &["self", "super", "crate", "Self", "_"];

/// Reserved words of Rust 2015 to 2024 (strict and reserved).
const KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "Self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen", "_",
];

/// Whether `s` is a Rust keyword (and so needs `r#` or a suffix as a name).
pub(crate) fn is_keyword(s: &str) -> bool {
    KEYWORDS.contains(&s)
}

/// The identifier for a generated name: raw (`r#type`) for keywords, with a
/// trailing `_` for the few that cannot be raw (`self_`), as prost-build does.
pub(crate) fn ident(s: &str) -> Ident {
    if NOT_RAW.contains(&s) {
        Ident::new(&format!("{s}_"), Span::call_site())
    } else if is_keyword(s) {
        Ident::new_raw(s, Span::call_site())
    } else {
        Ident::new(s, Span::call_site())
    }
}

/// Whether a topic parameter name can become a Rust and Go identifier:
/// ASCII letters, digits and `_`, not starting with a digit.
pub(crate) fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.chars().any(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_camel_case_follows_protoc_gen_go() {
        for (input, want) in [
            ("NormalRPC", "NormalRPC"),
            ("get_stats", "GetStats"),
            ("Haberdasher_v1", "HaberdasherV1"),
            ("MakeHat_v1", "MakeHatV1"),
            ("Size_v1", "SizeV1"),
            ("v1beta", "V1Beta"),
            ("v1_beta", "V1Beta"),
            ("a_1", "A_1"),
            ("_my_field_name_2", "XMyFieldName_2"),
            ("_", "X"),
            ("foo__bar", "Foo_Bar"),
            ("getHTTP", "GetHTTP"),
            ("ping", "Ping"),
            ("PING", "PING"),
            ("x9y", "X9Y"),
            ("", ""),
        ] {
            assert_eq!(go_camel_case(input), want, "CamelCase({input:?})");
        }
    }

    #[test]
    fn rust_names_follow_prost() {
        assert_eq!(snake("NormalRPC"), "normal_rpc");
        assert_eq!(snake("GetRegionStats"), "get_region_stats");
        assert_eq!(snake("MakeHat_v1"), "make_hat_v1");
        assert_eq!(snake("getHTTP"), "get_http");
        assert_eq!(upper_camel("Haberdasher_v1"), "HaberdasherV1");
        assert_eq!(upper_camel("my_service"), "MyService");
        assert_eq!(shouty("NormalRPC"), "NORMAL_RPC");
    }

    #[test]
    fn keywords_become_raw_or_suffixed() {
        assert_eq!(ident("type").to_string(), "r#type");
        assert_eq!(ident("async").to_string(), "r#async");
        assert_eq!(ident("self").to_string(), "self_");
        assert_eq!(ident("Self").to_string(), "Self_");
        assert_eq!(ident("normal_rpc").to_string(), "normal_rpc");
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("room"));
        assert!(is_identifier("room_name2"));
        assert!(is_identifier("_x"));
        assert!(!is_identifier("_"));
        assert!(!is_identifier(""));
        assert!(!is_identifier("room-name"));
        assert!(!is_identifier("2room"));
        assert!(!is_identifier("räum"));
    }
}
