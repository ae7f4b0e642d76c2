//! Messages in and out as JSON (the proto3 JSON mapping, via prost-reflect).

use base64::Engine as _;
use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};

use crate::error::{CliError, CliResult};

/// Encodes the JSON document `text` as a `desc` message.
pub fn encode(desc: &MessageDescriptor, text: &str) -> CliResult<Bytes> {
    let text = text.trim();
    let text = if text.is_empty() { "{}" } else { text };
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| CliError::input(format!("invalid JSON: {e}")))?;
    let msg = DynamicMessage::deserialize(desc.clone(), value).map_err(|e| {
        CliError::input(format!(
            "JSON does not fit message {}: {e}",
            desc.full_name()
        ))
    })?;
    Ok(Bytes::from(msg.encode_to_vec()))
}

/// Decodes `bytes` as a `desc` message into JSON; bytes that do not decode
/// come out as `{"@undecoded": base64, "@error": why}`.
pub fn decode(desc: &MessageDescriptor, bytes: &[u8]) -> serde_json::Value {
    match DynamicMessage::decode(desc.clone(), bytes) {
        Ok(m) => {
            let opts = SerializeOptions::new();
            m.serialize_with_options(serde_json::value::Serializer, &opts)
                .unwrap_or_else(|e| undecoded(bytes, &e.to_string()))
        }
        Err(e) => undecoded(bytes, &e.to_string()),
    }
}

/// Bytes whose type is unknown or that failed to decode.
pub fn undecoded(bytes: &[u8], why: &str) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    o.insert(
        "@bytes".into(),
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .into(),
    );
    if !why.is_empty() {
        o.insert("@error".into(), why.into());
    }
    o.into()
}

/// An `Any` (error details) as JSON: decoded when the pool knows its type.
pub fn any(
    pool: Option<&prost_reflect::DescriptorPool>,
    a: &prost_types::Any,
) -> serde_json::Value {
    let name = a.type_url.rsplit('/').next().unwrap_or_default();
    let mut o = serde_json::Map::new();
    o.insert("@type".into(), a.type_url.clone().into());
    match pool.and_then(|p| p.get_message_by_name(name)) {
        Some(d) => match decode(&d, &a.value) {
            serde_json::Value::Object(m) => o.extend(m),
            v => {
                o.insert("value".into(), v);
            }
        },
        None => {
            o.insert(
                "@bytes".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(&a.value)
                    .into(),
            );
        }
    }
    o.into()
}
