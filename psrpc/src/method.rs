//! Typed method descriptors: [`Method<Req, Res>`] names a method on the wire,
//! says how its requests are routed ([`Routing`]) and carries the request and
//! response types, so a call infers its response type from the method and a
//! handler of the wrong type does not compile.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use prost::Message;

use crate::error::{Error, ErrorCode, Result};
use crate::info::{MethodInfo, RpcInfo};

/// How the requests of a method (or the updates of a subscription) find
/// their servers (or subscribers). Both peers must agree on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Routing {
    /// One server, picked by the bus queue (the default kind).
    Queue,
    /// One server, picked by the client from the servers' affinity scores.
    Affinity,
    /// Every server answers (every subscriber gets each update).
    Multi,
}

/// A method of a service: its name on the wire, its [`Routing`], whether it
/// skips the claim handshake, and its types.
///
/// `Req` is what the client sends and `Res` what the server answers:
///
/// - unary and multi methods: the request and the response;
/// - streams: the client's messages and the server's messages (the client
///   opens a [`ClientStream<Req, Res>`](crate::ClientStream), the server's
///   handler gets a [`ServerStream<Res, Req>`](crate::ServerStream));
/// - subscriptions: `Res` is the update published and received (`Req` is
///   not used: the proto's request type, or `()`).
///
/// Descriptors are `const`, so they live in `static`s that clients and
/// servers share:
///
/// ```
/// use psrpc::Method;
///
/// #[derive(Clone, PartialEq, prost::Message)]
/// struct Job { #[prost(string, tag = "1")] id: String }
/// #[derive(Clone, PartialEq, prost::Message)]
/// struct Done { #[prost(bool, tag = "1")] ok: bool }
///
/// static RUN: Method<Job, Done> = Method::queue("Run");
/// static PLACE: Method<Job, Done> = Method::affinity("Place");
/// static STATS: Method<Job, Done> = Method::multi("Stats");
/// static DIRECT: Method<Job, Done> = Method::queue("Direct").single_server();
///
/// assert_eq!(PLACE.name(), "Place");
/// assert_eq!(STATS.routing(), psrpc::Routing::Multi);
/// assert!(DIRECT.is_single_server());
/// ```
pub struct Method<Req, Res> {
    pub(crate) info: MethodInfo,
    _types: PhantomData<fn(Req) -> Res>,
}

impl<Req, Res> Method<Req, Res> {
    const fn from_info(info: MethodInfo) -> Self {
        Method {
            info,
            _types: PhantomData,
        }
    }

    /// A method routed by the bus queue: one server answers each request.
    pub const fn queue(name: &'static str) -> Self {
        Self::from_info(MethodInfo::queue(name))
    }

    /// A method routed by affinity: every server scores each request and
    /// the client picks one.
    pub const fn affinity(name: &'static str) -> Self {
        Self::from_info(MethodInfo::affinity(name))
    }

    /// A multi method: every server answers (for a subscription: every
    /// subscriber gets each update).
    pub const fn multi(name: &'static str) -> Self {
        Self::from_info(MethodInfo::multi(name))
    }

    /// The same method without the claim handshake (`single_server` in
    /// the proto's topic parameters): the one server that hears a request
    /// answers it at once. No effect on a multi method.
    pub const fn single_server(mut self) -> Self {
        self.info.require_claim = false;
        self
    }

    /// A method built at run time, with an owned name (tools that read a
    /// schema at run time use it, with untyped messages).
    pub fn dynamic(name: impl Into<Cow<'static, str>>, routing: Routing) -> Self {
        let name = name.into();
        let info = match routing {
            Routing::Queue => MethodInfo::queue(""),
            Routing::Affinity => MethodInfo::affinity(""),
            Routing::Multi => MethodInfo::multi(""),
        };
        Self::from_info(MethodInfo { name, ..info })
    }

    /// The method name on the wire.
    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// How its requests are routed.
    pub fn routing(&self) -> Routing {
        self.info.routing()
    }

    /// Whether it skips the claim handshake (never true of a multi method).
    pub fn is_single_server(&self) -> bool {
        !self.info.multi && !self.info.require_claim
    }

    /// Whether `info` is a call of this method, by its name on the wire (a
    /// method descriptor does not know its service: compare
    /// `info.service` too where several services share a name).
    pub fn is_called_by(&self, info: &RpcInfo) -> bool {
        info.method == self.info.name
    }

    /// Decodes an encoded request of this method (as interceptors see it).
    pub fn decode_request(&self, bytes: &Bytes) -> Result<Req>
    where
        Req: Message + Default,
    {
        Req::decode(bytes.clone()).map_err(|e| Error::wrap(ErrorCode::MalformedRequest, e))
    }

    /// Decodes an encoded response of this method (as interceptors see it).
    pub fn decode_response(&self, bytes: &Bytes) -> Result<Res>
    where
        Res: Message + Default,
    {
        Res::decode(bytes.clone()).map_err(|e| Error::wrap(ErrorCode::MalformedResponse, e))
    }

    /// Encodes a request of this method (to replace one in an interceptor).
    pub fn encode_request(&self, req: &Req) -> Bytes
    where
        Req: Message,
    {
        Bytes::from(req.encode_to_vec())
    }

    /// Encodes a response of this method (to replace one in an interceptor).
    pub fn encode_response(&self, res: &Res) -> Bytes
    where
        Res: Message,
    {
        Bytes::from(res.encode_to_vec())
    }
}

impl MethodInfo {
    /// The routing these flags describe.
    pub(crate) fn routing(&self) -> Routing {
        if self.multi {
            Routing::Multi
        } else if self.affinity_enabled {
            Routing::Affinity
        } else {
            Routing::Queue
        }
    }
}

impl<Req, Res> Clone for Method<Req, Res> {
    fn clone(&self) -> Self {
        Self::from_info(self.info.clone())
    }
}

impl<Req, Res> PartialEq for Method<Req, Res> {
    fn eq(&self, other: &Self) -> bool {
        self.info == other.info
    }
}

impl<Req, Res> Eq for Method<Req, Res> {}

impl<Req, Res> fmt::Debug for Method<Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Method")
            .field("name", &self.name())
            .field("routing", &self.routing())
            .field("single_server", &self.is_single_server())
            .field("req", &std::any::type_name::<Req>())
            .field("res", &std::any::type_name::<Res>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_the_wire_flags() {
        let q: Method<(), ()> = Method::queue("Q");
        assert!(q.info.queue && q.info.require_claim && !q.info.multi);
        assert_eq!(q.routing(), Routing::Queue);
        let a: Method<(), ()> = Method::affinity("A");
        assert!(a.info.affinity_enabled && a.info.require_claim && !a.info.queue);
        assert_eq!(a.routing(), Routing::Affinity);
        let m: Method<(), ()> = Method::multi("M");
        assert!(m.info.multi && !m.info.require_claim && !m.info.queue);
        assert_eq!(m.routing(), Routing::Multi);
        assert!(!m.is_single_server());
        let d: Method<(), ()> = Method::queue("D").single_server();
        assert!(d.is_single_server() && d.info.queue && !d.info.require_claim);
    }

    #[test]
    fn dynamic_matches_the_const_constructors() {
        for (r, c) in [
            (Routing::Queue, Method::<(), ()>::queue("X")),
            (Routing::Affinity, Method::affinity("X")),
            (Routing::Multi, Method::multi("X")),
        ] {
            let d = Method::<(), ()>::dynamic(String::from("X"), r);
            assert_eq!(d, c);
            assert_eq!(d.routing(), r);
        }
        let d = Method::<(), ()>::dynamic("Y", Routing::Affinity).single_server();
        assert_eq!(d, Method::affinity("Y").single_server());
    }
}
