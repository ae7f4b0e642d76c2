//! Errors: [`Error`], its wire [`ErrorCode`], and the HTTP and gRPC mappings
//! (the codes and mappings of Go psrpc).

use std::fmt;
use std::sync::Arc;

use prost_types::Any;

/// The result type of every fallible psrpc operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A psrpc error code. Its wire form is the string of [`ErrorCode::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// No error (the empty string on the wire).
    Ok,
    /// The call was canceled (`canceled`).
    Canceled,
    /// The request could not be decoded (`malformed_request`).
    MalformedRequest,
    /// The response could not be decoded or encoded (`malformed_result`).
    MalformedResponse,
    /// The deadline passed before an answer arrived (`deadline_exceeded`).
    DeadlineExceeded,
    /// No server could take the call (`unavailable`).
    Unavailable,
    /// An error without a more specific code (`unknown`).
    Unknown,
    /// `invalid_argument`.
    InvalidArgument,
    /// `not_found`.
    NotFound,
    /// `not_acceptable`.
    NotAcceptable,
    /// `already_exists`.
    AlreadyExists,
    /// `permission_denied`.
    PermissionDenied,
    /// `resource_exhausted`.
    ResourceExhausted,
    /// `failed_precondition`.
    FailedPrecondition,
    /// `aborted`.
    Aborted,
    /// `out_of_range`.
    OutOfRange,
    /// `unimplemented`.
    Unimplemented,
    /// `internal`.
    Internal,
    /// `data_loss`.
    DataLoss,
    /// `unauthenticated`.
    Unauthenticated,
    /// `unprocessable_entity`.
    UnprocessableEntity,
    /// `upstream_server_error`.
    UpstreamServerError,
    /// `upstream_client_error`.
    UpstreamClientError,
    /// A code string this library does not know. The [`Error`] that
    /// carries it keeps the string as it arrived ([`Error::wire_code`]), so
    /// it travels on unchanged. Maps like `unknown`.
    Unrecognized,
}

/// gRPC status codes, numbered as in the gRPC specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
#[allow(missing_docs)]
pub enum GrpcCode {
    Ok = 0,
    Canceled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The gRPC code with this number, if it is one of the 17.
    pub fn from_i32(n: i32) -> Option<Self> {
        use GrpcCode::*;
        Some(match n {
            0 => Ok,
            1 => Canceled,
            2 => Unknown,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            _ => return None,
        })
    }
}

impl ErrorCode {
    /// Every code this library names, in the order of Go psrpc's list.
    pub const ALL: [ErrorCode; 23] = [
        ErrorCode::Ok,
        ErrorCode::Canceled,
        ErrorCode::MalformedRequest,
        ErrorCode::MalformedResponse,
        ErrorCode::DeadlineExceeded,
        ErrorCode::Unavailable,
        ErrorCode::Unknown,
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::NotAcceptable,
        ErrorCode::AlreadyExists,
        ErrorCode::PermissionDenied,
        ErrorCode::ResourceExhausted,
        ErrorCode::FailedPrecondition,
        ErrorCode::Aborted,
        ErrorCode::OutOfRange,
        ErrorCode::Unimplemented,
        ErrorCode::Internal,
        ErrorCode::DataLoss,
        ErrorCode::Unauthenticated,
        ErrorCode::UnprocessableEntity,
        ErrorCode::UpstreamServerError,
        ErrorCode::UpstreamClientError,
    ];

    /// The code's string on the wire (`Response.code`, `StreamClose.code`).
    /// [`ErrorCode::Unrecognized`] has no string of its own: it reads
    /// `unknown` here, and the error keeps the string it arrived with.
    pub fn as_str(&self) -> &'static str {
        use ErrorCode::*;
        match self {
            Ok => "",
            Canceled => "canceled",
            MalformedRequest => "malformed_request",
            MalformedResponse => "malformed_result",
            DeadlineExceeded => "deadline_exceeded",
            Unavailable => "unavailable",
            Unknown => "unknown",
            InvalidArgument => "invalid_argument",
            NotFound => "not_found",
            NotAcceptable => "not_acceptable",
            AlreadyExists => "already_exists",
            PermissionDenied => "permission_denied",
            ResourceExhausted => "resource_exhausted",
            FailedPrecondition => "failed_precondition",
            Aborted => "aborted",
            OutOfRange => "out_of_range",
            Unimplemented => "unimplemented",
            Internal => "internal",
            DataLoss => "data_loss",
            Unauthenticated => "unauthenticated",
            UnprocessableEntity => "unprocessable_entity",
            UpstreamServerError => "upstream_server_error",
            UpstreamClientError => "upstream_client_error",
            Unrecognized => "unknown",
        }
    }

    /// Parses a wire code string. The empty string is [`ErrorCode::Ok`];
    /// a string this library does not know is [`ErrorCode::Unrecognized`].
    pub fn from_wire(s: &str) -> Self {
        Self::ALL
            .iter()
            .find(|c| c.as_str() == s)
            .copied()
            .unwrap_or(ErrorCode::Unrecognized)
    }

    /// The HTTP status a gateway should answer with (Go psrpc HEAD).
    pub fn http_status(&self) -> u16 {
        use ErrorCode::*;
        match self {
            Ok => 200,
            Canceled | DeadlineExceeded | Unavailable => 503,
            MalformedRequest | InvalidArgument => 400,
            MalformedResponse | Unknown | Internal | DataLoss | Unrecognized => 500,
            NotFound => 404,
            NotAcceptable => 406,
            AlreadyExists | Aborted => 409,
            PermissionDenied => 403,
            ResourceExhausted => 429,
            FailedPrecondition => 412,
            OutOfRange => 416,
            Unimplemented => 501,
            Unauthenticated => 401,
            UnprocessableEntity => 422,
            UpstreamServerError => 502,
            UpstreamClientError => 424,
        }
    }

    /// The gRPC code this psrpc code maps to.
    pub fn grpc_code(&self) -> GrpcCode {
        use ErrorCode::*;
        match self {
            Ok => GrpcCode::Ok,
            Canceled => GrpcCode::Canceled,
            MalformedRequest | InvalidArgument | UpstreamClientError => GrpcCode::InvalidArgument,
            MalformedResponse | Internal | UpstreamServerError => GrpcCode::Internal,
            DeadlineExceeded => GrpcCode::DeadlineExceeded,
            Unavailable => GrpcCode::Unavailable,
            Unknown | NotAcceptable | UnprocessableEntity | Unrecognized => GrpcCode::Unknown,
            NotFound => GrpcCode::NotFound,
            AlreadyExists => GrpcCode::AlreadyExists,
            PermissionDenied => GrpcCode::PermissionDenied,
            ResourceExhausted => GrpcCode::ResourceExhausted,
            FailedPrecondition => GrpcCode::FailedPrecondition,
            Aborted => GrpcCode::Aborted,
            OutOfRange => GrpcCode::OutOfRange,
            Unimplemented => GrpcCode::Unimplemented,
            DataLoss => GrpcCode::DataLoss,
            Unauthenticated => GrpcCode::Unauthenticated,
        }
    }

    /// The psrpc code of the same name as a gRPC code.
    pub fn from_grpc(code: GrpcCode) -> Self {
        use ErrorCode::*;
        match code {
            GrpcCode::Ok => Ok,
            GrpcCode::Canceled => Canceled,
            GrpcCode::Unknown => Unknown,
            GrpcCode::InvalidArgument => InvalidArgument,
            GrpcCode::DeadlineExceeded => DeadlineExceeded,
            GrpcCode::NotFound => NotFound,
            GrpcCode::AlreadyExists => AlreadyExists,
            GrpcCode::PermissionDenied => PermissionDenied,
            GrpcCode::ResourceExhausted => ResourceExhausted,
            GrpcCode::FailedPrecondition => FailedPrecondition,
            GrpcCode::Aborted => Aborted,
            GrpcCode::OutOfRange => OutOfRange,
            GrpcCode::Unimplemented => Unimplemented,
            GrpcCode::Internal => Internal,
            GrpcCode::Unavailable => Unavailable,
            GrpcCode::DataLoss => DataLoss,
            GrpcCode::Unauthenticated => Unauthenticated,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A psrpc error: a code, a message, optional details and, on the side where
/// it was made, the error that caused it.
///
/// On the wire only the code, the message and the details travel
/// (`Response.code`, `.error`, `.error_details`); [`std::error::Error::source`]
/// keeps the local chain.
#[derive(Clone)]
pub struct Error {
    code: ErrorCode,
    /// The code string as it arrived, when this library does not know it.
    unrecognized: Option<Arc<str>>,
    message: String,
    details: Vec<Any>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// A new error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            unrecognized: None,
            message: message.into(),
            details: Vec::new(),
            source: None,
        }
    }

    /// A new error that wraps `source`; its message is the source's text.
    pub fn wrap<E>(code: ErrorCode, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        Error {
            code,
            unrecognized: None,
            message: source.to_string(),
            details: Vec::new(),
            source: Some(Arc::new(source)),
        }
    }

    /// Sets the error this one was caused by (kept locally, never sent).
    pub fn with_source<E>(mut self, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        self.source = Some(Arc::new(source));
        self
    }

    /// Attaches a proto message as a detail (packed as `Any` with
    /// `type.googleapis.com/<full name>`).
    pub fn with_detail<M: prost::Name>(mut self, detail: &M) -> Self {
        // Not `Any::from_msg`: prost's default type URL lacks the
        // `type.googleapis.com` host that Go peers write.
        self.details.push(Any {
            type_url: format!("type.googleapis.com/{}", M::full_name()),
            value: detail.encode_to_vec(),
        });
        self
    }

    /// Attaches an already packed detail.
    pub fn with_any_detail(mut self, detail: Any) -> Self {
        self.details.push(detail);
        self
    }

    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The code as it travels on the wire: [`ErrorCode::as_str`], or for
    /// an [`ErrorCode::Unrecognized`] code the string it arrived with.
    pub fn wire_code(&self) -> &str {
        self.unrecognized
            .as_deref()
            .unwrap_or_else(|| self.code.as_str())
    }

    /// The message, without the code.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The details, packed as `Any`.
    pub fn details(&self) -> &[Any] {
        &self.details
    }

    /// The first detail of type `M`, decoded.
    pub fn detail<M: prost::Name + Default>(&self) -> Option<M> {
        let name = M::full_name();
        self.details
            .iter()
            .filter(|a| a.type_url.rsplit('/').next() == Some(name.as_str()))
            .find_map(|a| M::decode(a.value.as_slice()).ok())
    }

    /// The gRPC code of this error.
    pub fn grpc_code(&self) -> GrpcCode {
        self.code.grpc_code()
    }

    /// The HTTP status of this error.
    pub fn http_status(&self) -> u16 {
        self.code.http_status()
    }

    /// Builds the error a gRPC status would map to (as Go maps it).
    pub fn from_grpc_status(code: GrpcCode, message: impl Into<String>, details: Vec<Any>) -> Self {
        Error {
            code: ErrorCode::from_grpc(code),
            unrecognized: None,
            message: message.into(),
            details,
            source: None,
        }
    }

    /// The error a peer sent with this code string, message and details
    /// (as Go reads them): an empty code becomes `unknown`; a code this
    /// library does not know is kept as it arrived ([`Error::wire_code`]),
    /// with [`ErrorCode::Unrecognized`] as its code.
    pub fn from_wire(wire: &str, message: impl Into<String>, details: Vec<Any>) -> Self {
        let code = match ErrorCode::from_wire(wire) {
            ErrorCode::Ok => ErrorCode::Unknown,
            c => c,
        };
        Error {
            code,
            unrecognized: (code == ErrorCode::Unrecognized).then(|| Arc::from(wire)),
            message: message.into(),
            details,
            source: None,
        }
    }

    /// An error with code [`ErrorCode::Canceled`].
    pub fn canceled(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Canceled, message)
    }
    /// An error with code [`ErrorCode::MalformedRequest`].
    pub fn malformed_request(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::MalformedRequest, message)
    }
    /// An error with code [`ErrorCode::MalformedResponse`].
    pub fn malformed_response(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::MalformedResponse, message)
    }
    /// An error with code [`ErrorCode::DeadlineExceeded`].
    pub fn deadline_exceeded(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::DeadlineExceeded, message)
    }
    /// An error with code [`ErrorCode::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unavailable, message)
    }
    /// An error with code [`ErrorCode::Unknown`].
    pub fn unknown(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unknown, message)
    }
    /// An error with code [`ErrorCode::InvalidArgument`].
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::InvalidArgument, message)
    }
    /// An error with code [`ErrorCode::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::NotFound, message)
    }
    /// An error with code [`ErrorCode::NotAcceptable`].
    pub fn not_acceptable(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::NotAcceptable, message)
    }
    /// An error with code [`ErrorCode::AlreadyExists`].
    pub fn already_exists(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::AlreadyExists, message)
    }
    /// An error with code [`ErrorCode::PermissionDenied`].
    pub fn permission_denied(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::PermissionDenied, message)
    }
    /// An error with code [`ErrorCode::ResourceExhausted`].
    pub fn resource_exhausted(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::ResourceExhausted, message)
    }
    /// An error with code [`ErrorCode::FailedPrecondition`].
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::FailedPrecondition, message)
    }
    /// An error with code [`ErrorCode::Aborted`].
    pub fn aborted(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Aborted, message)
    }
    /// An error with code [`ErrorCode::OutOfRange`].
    pub fn out_of_range(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::OutOfRange, message)
    }
    /// An error with code [`ErrorCode::Unimplemented`].
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unimplemented, message)
    }
    /// An error with code [`ErrorCode::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Internal, message)
    }
    /// An error with code [`ErrorCode::DataLoss`].
    pub fn data_loss(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::DataLoss, message)
    }
    /// An error with code [`ErrorCode::Unauthenticated`].
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::Unauthenticated, message)
    }
    /// An error with code [`ErrorCode::UnprocessableEntity`].
    pub fn unprocessable_entity(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::UnprocessableEntity, message)
    }
    /// An error with code [`ErrorCode::UpstreamServerError`].
    pub fn upstream_server_error(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::UpstreamServerError, message)
    }
    /// An error with code [`ErrorCode::UpstreamClientError`].
    pub fn upstream_client_error(message: impl Into<String>) -> Self {
        Error::new(ErrorCode::UpstreamClientError, message)
    }

    /// `canceled` "request canceled".
    pub fn request_canceled() -> Self {
        Error::new(ErrorCode::Canceled, "request canceled")
    }
    /// `deadline_exceeded` "request timed out".
    pub fn request_timed_out() -> Self {
        Error::new(ErrorCode::DeadlineExceeded, "request timed out")
    }
    /// `unavailable` "no response from servers".
    pub fn no_response() -> Self {
        Error::new(ErrorCode::Unavailable, "no response from servers")
    }
    /// `unimplemented` "method is not implemented": what a server answers
    /// for a method it does not implement.
    pub fn method_not_implemented() -> Self {
        Error::new(ErrorCode::Unimplemented, "method is not implemented")
    }
    /// `unavailable` "EOF": a stream closed by a server that shut down.
    pub fn stream_eof() -> Self {
        Error::new(ErrorCode::Unavailable, "EOF")
    }
    /// `canceled` "client is closed".
    pub fn client_closed() -> Self {
        Error::new(ErrorCode::Canceled, "client is closed")
    }
    /// `canceled` "server is closed".
    pub fn server_closed() -> Self {
        Error::new(ErrorCode::Canceled, "server is closed")
    }
    /// `canceled` "stream closed".
    pub fn stream_closed() -> Self {
        Error::new(ErrorCode::Canceled, "stream closed")
    }
    /// `unavailable` "stream message discarded by slow consumer".
    pub fn slow_consumer() -> Self {
        Error::new(
            ErrorCode::Unavailable,
            "stream message discarded by slow consumer",
        )
    }
    /// `unavailable` "no servers available (received N responses)".
    pub fn no_servers_available(received: usize) -> Self {
        Error::new(
            ErrorCode::Unavailable,
            format!("no servers available (received {received} responses)"),
        )
    }
}

impl PartialEq for Error {
    /// Two errors are equal when code, message and details are (the source is
    /// local and not compared).
    fn eq(&self, other: &Self) -> bool {
        self.wire_code() == other.wire_code()
            && self.message == other.message
            && self.details == other.details
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("code", &self.wire_code())
            .field("message", &self.message);
        if !self.details.is_empty() {
            d.field("details", &self.details);
        }
        if let Some(s) = &self.source {
            d.field("source", s);
        }
        d.finish()
    }
}

/// `code: message`, as `not_found: no such room` (the message alone when
/// the code is empty).
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.wire_code() {
            "" => f.write_str(&self.message),
            code => write!(f, "{code}: {}", self.message),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<prost::DecodeError> for Error {
    /// `internal`, keeping the decode error as the source (as tonic maps it).
    fn from(e: prost::DecodeError) -> Self {
        Error::wrap(ErrorCode::Internal, e)
    }
}

impl From<prost::EncodeError> for Error {
    /// `internal`, keeping the encode error as the source.
    fn from(e: prost::EncodeError) -> Self {
        Error::wrap(ErrorCode::Internal, e)
    }
}

impl From<tokio::time::error::Elapsed> for Error {
    /// `deadline_exceeded`, keeping the timeout as the source.
    fn from(e: tokio::time::error::Elapsed) -> Self {
        Error::wrap(ErrorCode::DeadlineExceeded, e)
    }
}

impl From<std::io::Error> for Error {
    /// The code that says what happened, keeping the I/O error as the
    /// source: a refused, reset or lost connection is `unavailable` (so a
    /// retry policy can act on it), a timeout `deadline_exceeded`, bad
    /// input `invalid_argument`, and so on; anything else `internal`.
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind::*;
        let code = match e.kind() {
            NotFound => ErrorCode::NotFound,
            PermissionDenied => ErrorCode::PermissionDenied,
            ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
            | AddrNotAvailable | HostUnreachable | NetworkUnreachable | NetworkDown => {
                ErrorCode::Unavailable
            }
            TimedOut => ErrorCode::DeadlineExceeded,
            AlreadyExists => ErrorCode::AlreadyExists,
            InvalidInput | InvalidData => ErrorCode::InvalidArgument,
            Unsupported => ErrorCode::Unimplemented,
            OutOfMemory | StorageFull | QuotaExceeded => ErrorCode::ResourceExhausted,
            UnexpectedEof => ErrorCode::DataLoss,
            Interrupted => ErrorCode::Canceled,
            _ => ErrorCode::Internal,
        };
        Error::wrap(code, e)
    }
}

/// Conversions to and from `tonic::Status` (feature `tonic`).
#[cfg(feature = "tonic")]
mod tonic_status {
    use prost::Message;
    use prost_types::Any;

    use super::{Error, GrpcCode};

    /// `google.rpc.Status`: how gRPC carries an error's details (in the
    /// `grpc-status-details-bin` trailer, which is `tonic::Status::details`).
    #[derive(Clone, PartialEq, Message)]
    struct RpcStatus {
        #[prost(int32, tag = "1")]
        code: i32,
        #[prost(string, tag = "2")]
        message: String,
        #[prost(message, repeated, tag = "3")]
        details: Vec<Any>,
    }

    impl From<Error> for tonic::Status {
        /// The gRPC code of the error's code ([`Error::grpc_code`]), its
        /// message, and its details as a `google.rpc.Status`.
        fn from(e: Error) -> Self {
            let code = tonic::Code::from_i32(e.grpc_code() as i32);
            if e.details.is_empty() {
                return tonic::Status::new(code, e.message);
            }
            let status = RpcStatus {
                code: code as i32,
                message: e.message.clone(),
                details: e.details,
            };
            tonic::Status::with_details(code, e.message, status.encode_to_vec().into())
        }
    }

    impl From<tonic::Status> for Error {
        /// The psrpc code of the status's gRPC code
        /// ([`ErrorCode::from_grpc`](super::ErrorCode::from_grpc)), its
        /// message, the details of its `google.rpc.Status` (none if they do
        /// not decode), and the status itself as the source.
        fn from(s: tonic::Status) -> Self {
            let details = RpcStatus::decode(s.details())
                .map(|r| r.details)
                .unwrap_or_default();
            let code = GrpcCode::from_i32(s.code() as i32).unwrap_or(GrpcCode::Unknown);
            Error::from_grpc_status(code, s.message(), details).with_source(s)
        }
    }
}

/// The text a panic was raised with.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_map() {
        let table: &[(&str, u16, i32)] = &[
            ("", 200, 0),
            ("canceled", 503, 1),
            ("malformed_request", 400, 3),
            ("malformed_result", 500, 13),
            ("deadline_exceeded", 503, 4),
            ("unavailable", 503, 14),
            ("unknown", 500, 2),
            ("invalid_argument", 400, 3),
            ("not_found", 404, 5),
            ("not_acceptable", 406, 2),
            ("already_exists", 409, 6),
            ("permission_denied", 403, 7),
            ("resource_exhausted", 429, 8),
            ("failed_precondition", 412, 9),
            ("aborted", 409, 10),
            ("out_of_range", 416, 11),
            ("unimplemented", 501, 12),
            ("internal", 500, 13),
            ("data_loss", 500, 15),
            ("unauthenticated", 401, 16),
            ("unprocessable_entity", 422, 2),
            ("upstream_server_error", 502, 13),
            ("upstream_client_error", 424, 3),
            ("something_else", 500, 2),
        ];
        assert_eq!(table.len(), ErrorCode::ALL.len() + 1);
        for &(s, http, grpc) in table {
            let c = ErrorCode::from_wire(s);
            let want = if s.is_empty() { "unknown" } else { s };
            assert_eq!(Error::from_wire(s, "m", vec![]).wire_code(), want);
            assert_eq!(c.http_status(), http, "{s}");
            assert_eq!(c.grpc_code() as i32, grpc, "{s}");
        }
    }

    #[test]
    fn grpc_to_psrpc_by_name() {
        for n in 0..17 {
            let g = GrpcCode::from_i32(n).unwrap();
            let c = ErrorCode::from_grpc(g);
            // Every gRPC code maps to the psrpc code of the same name, which maps back.
            assert_eq!(c.grpc_code(), g, "{c}");
        }
        assert_eq!(GrpcCode::from_i32(17), None);
    }

    #[test]
    fn empty_wire_code_is_unknown() {
        let e = Error::from_wire("", "boom", vec![]);
        assert_eq!(e.code(), ErrorCode::Unknown);
        assert_eq!(e.to_string(), "unknown: boom");
    }

    #[test]
    fn source_chain_is_kept_locally() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::wrap(ErrorCode::Internal, io);
        assert_eq!(e.message(), "disk on fire");
        let src = std::error::Error::source(&e).expect("source");
        assert_eq!(src.to_string(), "disk on fire");
    }

    #[test]
    fn display_shows_the_code() {
        assert_eq!(
            Error::not_found("no such room").to_string(),
            "not_found: no such room"
        );
        let e = Error::from_wire("teapot", "short and stout", vec![]);
        assert_eq!(e.to_string(), "teapot: short and stout");
        assert_eq!(
            (e.code(), e.wire_code()),
            (ErrorCode::Unrecognized, "teapot")
        );
        assert_eq!(e.grpc_code(), GrpcCode::Unknown);
    }

    #[test]
    fn named_constructors_carry_their_code() {
        assert_eq!(
            Error::invalid_argument("x").code(),
            ErrorCode::InvalidArgument
        );
        assert_eq!(Error::unavailable("x").code(), ErrorCode::Unavailable);
        assert_eq!(
            Error::upstream_client_error("x").code(),
            ErrorCode::UpstreamClientError
        );
        assert_eq!(Error::internal("boom").message(), "boom");
    }

    #[test]
    fn conversions_keep_the_source_and_say_what_happened() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = Error::from(io);
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert!(std::error::Error::source(&e).is_some());
        let e: Error = <prost_types::Any as prost::Message>::decode(&b"\xff"[..])
            .unwrap_err()
            .into();
        assert_eq!(e.code(), ErrorCode::Internal);
        assert!(std::error::Error::source(&e).is_some());
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn tonic_status_round_trip_with_details() {
        let detail = prost_types::Duration {
            seconds: 7,
            nanos: 0,
        };
        let e = Error::failed_precondition("not yet").with_detail(&detail);
        let status = tonic::Status::from(e.clone());
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert_eq!(status.message(), "not yet");
        assert!(!status.details().is_empty());
        let back = Error::from(status);
        assert_eq!(back, e);
        assert_eq!(back.detail::<prost_types::Duration>(), Some(detail));
        assert!(std::error::Error::source(&back).is_some());
        // A status without details, and a code psrpc names differently.
        let back = Error::from(tonic::Status::not_found("gone"));
        assert_eq!((back.code(), back.message()), (ErrorCode::NotFound, "gone"));
        assert!(back.details().is_empty());
    }
}
