//! The macro that declares an event enum from one table of (variant, struct, type).
//!
//! Keeping the `type` strings in one table makes the serde tags, the dispatch in the
//! parsers, the list of known types and the generated JSON Schemas agree by
//! construction.

/// Declares a `#[serde(tag = "type")]` enum whose variants wrap one struct each, with
/// `TYPES`, `type_name()`, `from_value()` (path-tracking, by type) and `schemas()`.
macro_rules! event_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident($payload:ty) = $tag:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
        #[serde(tag = "type")]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $tag)] $variant($payload), )*
        }

        impl $name {
            /// Every `type` string of this direction, in declaration order.
            pub const TYPES: &'static [&'static str] = &[$($tag),*];

            /// The `type` string of this event.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $( $name::$variant(_) => $tag, )*
                }
            }

            /// Deserializes the payload for `type_name`, tracking the path of a bad
            /// field; `None` when the type is unknown.
            pub(crate) fn from_value(
                type_name: &str,
                value: serde_json::Value,
            ) -> Option<Result<Self, serde_path_to_error::Error<serde_json::Error>>> {
                match type_name {
                    $( $tag => Some(serde_path_to_error::deserialize::<_, $payload>(value)
                        .map($name::$variant)), )*
                    _ => None,
                }
            }

            /// One JSON Schema per event type, with its `type` constant added.
            pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
                vec![$( ($tag, crate::schema::event_schema::<$payload>($tag)), )*]
            }
        }

    };
}

pub(crate) use event_enum;
