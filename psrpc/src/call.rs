//! The options of one call ([`CallOptions`]), which the call builders set
//! and interceptors read and change.

pub(crate) use crate::client::CallOptions;
