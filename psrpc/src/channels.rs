//! Channel names (docs/PROTOCOL.md, "Channels"): the Legacy (Redis and local), Server
//! (NATS subject) and Local (NATS demultiplexing key) name of every channel,
//! and the sanitising rule for name parts.

use std::fmt::Write;

/// A logical channel: its three names. A bus picks the one it needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Channel {
    /// Flat, sanitized, `|`-separated: the Redis channel and the local bus key.
    pub legacy: String,
    /// The NATS subject.
    pub server: String,
    /// The key that demultiplexes a shared NATS subject (`<Method>.<KIND>`);
    /// empty for client channels.
    pub local: String,
}

/// Writes `part` sanitized: `[0-9A-Za-z_]` as is, any other character as
/// `u+XXXX` (below U+10000) or `U+XXXXXXXX`, lowercase hex.
pub fn sanitize_into(out: &mut String, part: &str) {
    for c in part.chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else if (c as u32) < 0x10000 {
            let _ = write!(out, "u+{:04x}", c as u32);
        } else {
            let _ = write!(out, "U+{:08x}", c as u32);
        }
    }
}

/// `part` sanitized (see [`sanitize_into`]).
pub fn sanitize(part: &str) -> String {
    let mut s = String::with_capacity(part.len());
    sanitize_into(&mut s, part);
    s
}

/// One part of a joined name: a single string or the topic list.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// A single name part.
    One(&'a str),
    /// A topic list, expanded in place.
    Many(&'a [String]),
}

/// The Go `formatChannel` join (as Go writes it), edge cases included: empty
/// parts add nothing, except that an empty *last* topic element leaves a
/// dangling delimiter (matched because Go peers use these names).
pub fn join(delim: char, parts: &[Part<'_>]) -> String {
    let mut out = String::with_capacity(64);
    join_into(&mut out, delim, parts);
    out
}

fn join_into(out: &mut String, delim: char, parts: &[Part<'_>]) {
    let mut pending = false;
    for part in parts {
        if pending {
            out.push(delim);
        }
        let mark = out.len();
        match part {
            Part::One(s) => sanitize_into(out, s),
            Part::Many(list) => {
                let items: Vec<Part<'_>> = list.iter().map(|s| Part::One(s)).collect();
                join_into(out, delim, &items);
            }
        }
        pending = out.len() > mark;
    }
}

fn server_name(prefix: &str, service: &str, topic: &[String], queue: bool) -> String {
    let mut s = String::with_capacity(32);
    s.push_str(prefix);
    s.push_str(service);
    for t in topic.iter().filter(|t| !t.is_empty()) {
        s.push('.');
        sanitize_into(&mut s, t);
    }
    if queue {
        s.push_str(".Q");
    }
    s
}

fn server_channel(
    service: &str,
    method: &str,
    topic: &[String],
    queue: bool,
    kind: &str,
) -> Channel {
    Channel {
        legacy: join(
            '|',
            &[
                Part::One(service),
                Part::One(method),
                Part::Many(topic),
                Part::One(kind),
            ],
        ),
        server: server_name("SRV.", service, topic, queue),
        local: format!("{method}.{kind}"),
    }
}

fn client_channel(service: &str, client_id: &str, kind: &str) -> Channel {
    Channel {
        legacy: join(
            '|',
            &[Part::One(service), Part::One(client_id), Part::One(kind)],
        ),
        server: format!("CLI.{service}.{client_id}.{kind}"),
        local: String::new(),
    }
}

/// The request channel of a method (also where subscription updates are
/// published). `queue` adds `.Q` to the NATS subject.
pub fn rpc_channel(service: &str, method: &str, topic: &[String], queue: bool) -> Channel {
    server_channel(service, method, topic, queue, "REQ")
}

/// The claim-response channel of a method (never queue).
pub fn claim_response_channel(service: &str, method: &str, topic: &[String]) -> Channel {
    server_channel(service, method, topic, false, "RCLAIM")
}

/// The server side of a method's stream channel (never queue).
pub fn stream_server_channel(service: &str, method: &str, topic: &[String]) -> Channel {
    server_channel(service, method, topic, false, "STR")
}

/// A client's response channel.
pub fn response_channel(service: &str, client_id: &str) -> Channel {
    client_channel(service, client_id, "RES")
}

/// A client's claim-request channel.
pub fn claim_request_channel(service: &str, client_id: &str) -> Channel {
    client_channel(service, client_id, "CLAIM")
}

/// A client's stream channel (`client_id` is the stream's node id).
pub fn stream_channel(service: &str, client_id: &str) -> Channel {
    client_channel(service, client_id, "STR")
}

/// Checks that `id` can be a client id (also the node id of its streams).
///
/// The client id goes into the NATS subjects of the client's channels as it
/// is (`CLI.<service>.<id>.RES`; only Redis names are sanitised), so an id
/// that NATS would read as syntax would break them: `*` or `>` make the
/// subscription a wildcard that receives other clients' answers, a `.` adds
/// tokens, whitespace or control characters end the protocol line. Such ids
/// are refused with `invalid_argument` on every bus, so that a client works
/// the same whichever bus carries it. Empty ids are refused too.
pub fn check_client_id(id: &str) -> crate::Result<()> {
    check_name("client id", id, true)
}

/// Checks that `id` can be a server id, by the rule of
/// [`check_client_id`]: the server id is the node id of the streams it
/// accepts and names it in claims, so it is held to the same rule.
pub fn check_server_id(id: &str) -> crate::Result<()> {
    check_name("server id", id, true)
}

/// Checks that `service` can be a service name: not empty, and without
/// `*`, `>`, whitespace or control characters, which would make its NATS
/// subjects wildcards or end the protocol line. (A `.` only adds subject
/// tokens, the same for every peer, and is allowed.)
pub fn check_service_name(service: &str) -> crate::Result<()> {
    check_name("service name", service, false)
}

/// `invalid_argument` when `name` (a `what`) is empty or holds a character
/// that NATS reads as syntax (`.` too when `no_dot`).
fn check_name(what: &str, name: &str, no_dot: bool) -> crate::Result<()> {
    if name.is_empty() {
        return Err(crate::Error::invalid_argument(format!(
            "{what} must not be empty"
        )));
    }
    let bad = name.chars().find(|&c| {
        (no_dot && c == '.') || matches!(c, '*' | '>') || c.is_whitespace() || c.is_control()
    });
    match bad {
        Some(c) => Err(crate::Error::invalid_argument(format!(
            "{what} \"{}\" contains {c:?}: {}'*', '>', whitespace and control characters are not allowed",
            crate::drops::Truncated(name),
            if no_dot { "'.', " } else { "" },
        ))),
        None => Ok(()),
    }
}

/// The server-side identity of a handler: method and topic joined with `.`.
pub fn handler_key(method: &str, topic: &[String]) -> String {
    join('.', &[Part::One(method), Part::Many(topic)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn names(c: &Channel) -> (&str, &str, &str) {
        (&c.legacy, &c.server, &c.local)
    }

    #[test]
    fn go_unit_vectors() {
        assert_eq!(
            names(&response_channel("foo", "bar")),
            ("foo|bar|RES", "CLI.foo.bar.RES", "")
        );
        assert_eq!(
            names(&claim_request_channel("foo", "bar")),
            ("foo|bar|CLAIM", "CLI.foo.bar.CLAIM", "")
        );
        assert_eq!(
            names(&stream_channel("foo", "bar")),
            ("foo|bar|STR", "CLI.foo.bar.STR", "")
        );
        assert_eq!(
            names(&rpc_channel("foo", "bar", &[], false)),
            ("foo|bar|REQ", "SRV.foo", "bar.REQ")
        );
        assert_eq!(
            names(&claim_response_channel("foo", "bar", &[])),
            ("foo|bar|RCLAIM", "SRV.foo", "bar.RCLAIM")
        );
        assert_eq!(
            names(&stream_server_channel("foo", "bar", &[])),
            ("foo|bar|STR", "SRV.foo", "bar.STR")
        );
        let abc = t(&["a", "b", "c"]);
        assert_eq!(
            names(&rpc_channel("foo", "bar", &abc, false)),
            ("foo|bar|a|b|c|REQ", "SRV.foo.a.b.c", "bar.REQ")
        );
        assert_eq!(
            names(&claim_response_channel("foo", "bar", &abc)),
            ("foo|bar|a|b|c|RCLAIM", "SRV.foo.a.b.c", "bar.RCLAIM")
        );
        assert_eq!(
            names(&stream_server_channel("foo", "bar", &abc)),
            ("foo|bar|a|b|c|STR", "SRV.foo.a.b.c", "bar.STR")
        );
        assert_eq!(handler_key("bar", &abc), "bar.a.b.c");
        assert_eq!(
            rpc_channel("foo", "bar", &abc, true).server,
            "SRV.foo.a.b.c.Q"
        );
        assert_eq!(
            claim_response_channel("foo", "bar", &abc).server,
            "SRV.foo.a.b.c"
        );
        assert_eq!(
            stream_server_channel("foo", "bar", &abc).server,
            "SRV.foo.a.b.c"
        );
    }

    #[test]
    fn sanitizer_vector() {
        let topic = t(&["软件"]);
        let s = join(
            '.',
            &[
                Part::One("🚀_É"),
                Part::One("🛰_bar"),
                Part::Many(&topic),
                Part::One("END"),
            ],
        );
        assert_eq!(s, "U+0001f680_u+00c9.U+0001f6f0_bar.u+8f6fu+4ef6.END");
        assert_eq!(sanitize("a.b*c>d e"), "au+002ebu+002acu+003edu+0020e");
        assert_eq!(sanitize("-/. É"), "u+002du+002fu+002eu+0020u+00c9");
    }

    #[test]
    fn worked_example_4_4() {
        let topic = t(&["us-east", "room/1"]);
        let c = rpc_channel("MyService", "IntensiveRPC", &topic, false);
        assert_eq!(
            names(&c),
            (
                "MyService|IntensiveRPC|usu+002deast|roomu+002f1|REQ",
                "SRV.MyService.usu+002deast.roomu+002f1",
                "IntensiveRPC.REQ"
            )
        );
        let c = claim_response_channel("MyService", "IntensiveRPC", &topic);
        assert_eq!(
            c.legacy,
            "MyService|IntensiveRPC|usu+002deast|roomu+002f1|RCLAIM"
        );
        assert_eq!(c.local, "IntensiveRPC.RCLAIM");
        let c = stream_server_channel("MyService", "IntensiveRPC", &topic);
        assert_eq!(
            c.legacy,
            "MyService|IntensiveRPC|usu+002deast|roomu+002f1|STR"
        );
        assert_eq!(
            handler_key("IntensiveRPC", &topic),
            "IntensiveRPC.usu+002deast.roomu+002f1"
        );
        let c = rpc_channel("MyService", "NormalRPC", &topic, true);
        assert_eq!(c.server, "SRV.MyService.usu+002deast.roomu+002f1.Q");
        assert_eq!(c.legacy, "MyService|NormalRPC|usu+002deast|roomu+002f1|REQ");
        assert_eq!(
            rpc_channel("MyService", "NormalRPC", &[], true).server,
            "SRV.MyService.Q"
        );
        assert_eq!(
            names(&response_channel("MyService", "CLI_abc")),
            ("MyService|CLI_abc|RES", "CLI.MyService.CLI_abc.RES", "")
        );
    }

    #[test]
    fn client_ids() {
        for ok in ["CLI_abc", "a-b", "a|b", "É", "x/y"] {
            assert!(check_client_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "*", ">", "a.b", "a b", "a\tb", "a\rb", "x*", "\u{0}"] {
            let e = check_client_id(bad).unwrap_err();
            assert_eq!(e.code(), crate::ErrorCode::InvalidArgument, "{bad:?}");
        }
    }

    #[test]
    fn empty_topic_elements() {
        // An empty last element leaves a dangling delimiter, as in Go ...
        assert_eq!(
            rpc_channel("S", "M", &t(&["a", ""]), false).legacy,
            "S|M|a||REQ"
        );
        // ... which the Server form skips.
        assert_eq!(
            rpc_channel("S", "M", &t(&["a", ""]), false).server,
            "SRV.S.a"
        );
        assert_eq!(rpc_channel("S", "M", &t(&[""]), false).legacy, "S|M|REQ");
        assert_eq!(
            rpc_channel("S", "M", &t(&["", "a"]), false).legacy,
            "S|M|a|REQ"
        );
        assert_eq!(
            rpc_channel("S", "M", &t(&["a", "", "b"]), false).legacy,
            "S|M|a|b|REQ"
        );
        // a trailing empty part leaves the delimiter too (it is added first)
        assert_eq!(
            join('|', &[Part::One(""), Part::One("x"), Part::One("")]),
            "x|"
        );
    }
}
