//! JSON Schemas of the events, as committed under `docs/schema/`.
//!
//! One file per event, named `<direction>.<type>.json` (for example
//! `client.session.update.json`). The test `tests/schema.rs` checks the committed files
//! against [`all_schemas`]; `MMRT_UPDATE_SCHEMA=1 cargo test -p mmrt-protocol --test
//! schema` rewrites them.

use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Value};

use crate::client::ClientEvent;
use crate::server::ServerEvent;

/// The schema of one event payload, with its `type` constant added.
pub(crate) fn event_schema<T: JsonSchema>(type_name: &str) -> Schema {
    let mut schema = SchemaGenerator::default().into_root_schema_for::<T>();
    schema.insert("title".into(), json!(type_name));
    let object = schema.ensure_object();
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        properties.insert(
            "type".into(),
            json!({ "type": "string", "const": type_name }),
        );
    }
    match object.get_mut("required") {
        Some(Value::Array(required)) => required.insert(0, json!("type")),
        _ => {
            object.insert("required".into(), json!(["type"]));
        }
    }
    schema
}

/// Every schema file: `(file name, schema)`.
pub fn all_schemas() -> Vec<(String, Value)> {
    let client = ClientEvent::schemas()
        .into_iter()
        .map(|(name, schema)| (format!("client.{name}.json"), schema.to_value()));
    let server = ServerEvent::schemas()
        .into_iter()
        .map(|(name, schema)| (format!("server.{name}.json"), schema.to_value()));
    client.chain(server).collect()
}
