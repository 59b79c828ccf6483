//! Media payloads inside JSON events: base64 bytes, image formats and data URLs.
//!
//! Base64 fields decode once, while the event is parsed, so a bad payload is an
//! `invalid_base64` error that names its field and the server never sees text where it
//! expects bytes.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{ErrorCode, ProtocolError};

/// The start of the serde error message for a base64 field that does not decode.
///
/// The event parser looks for it to report `invalid_base64` rather than
/// `invalid_field`.
pub(crate) const INVALID_BASE64_MARKER: &str = "invalid base64";

/// Bytes carried as a standard (padded) base64 string on the wire.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Base64Bytes(pub Vec<u8>);

impl Base64Bytes {
    /// Decodes standard base64, as OpenAI clients send it.
    pub fn decode(text: &str) -> Result<Self, ProtocolError> {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Base64Bytes)
            .map_err(|err| ProtocolError::new(ErrorCode::InvalidBase64, format!("{err}")))
    }

    /// The base64 text.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }

    /// The decoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Takes the decoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl From<Vec<u8>> for Base64Bytes {
    fn from(bytes: Vec<u8>) -> Self {
        Base64Bytes(bytes)
    }
}

impl fmt::Debug for Base64Bytes {
    // Payloads are large and are client content: show only their size.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Base64Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Base64Bytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.encode())
    }
}

impl<'de> Deserialize<'de> for Base64Bytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = Cow::<str>::deserialize(deserializer)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map(Base64Bytes)
            .map_err(|err| serde::de::Error::custom(format!("{INVALID_BASE64_MARKER}: {err}")))
    }
}

impl JsonSchema for Base64Bytes {
    fn schema_name() -> Cow<'static, str> {
        "Base64Bytes".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "contentEncoding": "base64",
            "description": "Bytes as standard padded base64."
        })
    }
}

/// An encoded still image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImageFormat {
    /// JPEG (JFIF/EXIF) bytes.
    Jpeg,
    /// PNG bytes.
    Png,
    /// Uncompressed 8-bit RGB, row-major, no padding; needs width and height.
    RawRgb,
}

impl ImageFormat {
    /// The MIME type, for data URLs; raw RGB has none of its own.
    pub fn mime(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
            ImageFormat::RawRgb => "application/octet-stream",
        }
    }

    /// Recognizes JPEG and PNG by their first bytes.
    pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(ImageFormat::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(ImageFormat::Png)
        } else {
            None
        }
    }
}

/// An image carried in a `data:` URL, as `input_image.image_url` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataUrlImage {
    /// The format named by the URL's MIME type.
    pub format: ImageFormat,
    /// The decoded image bytes.
    pub bytes: Vec<u8>,
}

impl DataUrlImage {
    /// Parses `data:image/jpeg;base64,...` or `data:image/png;base64,...`.
    ///
    /// Remote `http(s)` URLs are refused with `unsupported`: the server fetches
    /// nothing on a client's behalf.
    pub fn parse(url: &str) -> Result<DataUrlImage, ProtocolError> {
        let Some(rest) = url.strip_prefix("data:") else {
            return Err(ProtocolError::new(
                ErrorCode::Unsupported,
                "only data: URLs are accepted for images",
            ));
        };
        let Some((header, payload)) = rest.split_once(',') else {
            return Err(ProtocolError::new(
                ErrorCode::InvalidImage,
                "data URL has no ',' before its payload",
            ));
        };
        let Some(mime) = header.strip_suffix(";base64") else {
            return Err(ProtocolError::new(
                ErrorCode::InvalidImage,
                "data URL must be base64 encoded",
            ));
        };
        let format = match mime.to_ascii_lowercase().as_str() {
            "image/jpeg" | "image/jpg" => ImageFormat::Jpeg,
            "image/png" => ImageFormat::Png,
            _ => {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidImage,
                    "image MIME type must be image/jpeg or image/png",
                ))
            }
        };
        let bytes = Base64Bytes::decode(payload)?.into_bytes();
        Ok(DataUrlImage { format, bytes })
    }

    /// Builds the data URL text.
    pub fn to_url(&self) -> String {
        format!(
            "data:{};base64,{}",
            self.format.mime(),
            base64::engine::general_purpose::STANDARD.encode(&self.bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_url_round_trip() {
        let image = DataUrlImage {
            format: ImageFormat::Png,
            bytes: b"\x89PNG\r\n\x1a\nrest".to_vec(),
        };
        let url = image.to_url();
        assert!(url.starts_with("data:image/png;base64,"));
        assert_eq!(DataUrlImage::parse(&url).expect("own URL parses"), image);
    }

    #[test]
    fn data_url_errors() {
        let code = |url: &str| DataUrlImage::parse(url).map_err(|e| e.code).err();
        assert_eq!(code("https://x/y.png"), Some(ErrorCode::Unsupported));
        assert_eq!(code("data:image/png;base64"), Some(ErrorCode::InvalidImage));
        assert_eq!(
            code("data:image/gif;base64,AAAA"),
            Some(ErrorCode::InvalidImage)
        );
        assert_eq!(code("data:image/png,AAAA"), Some(ErrorCode::InvalidImage));
        assert_eq!(
            code("data:image/png;base64,@@"),
            Some(ErrorCode::InvalidBase64)
        );
    }

    #[test]
    fn sniffs_formats() {
        assert_eq!(
            ImageFormat::sniff(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some(ImageFormat::Jpeg)
        );
        assert_eq!(
            ImageFormat::sniff(b"\x89PNG\r\n\x1a\n"),
            Some(ImageFormat::Png)
        );
        assert_eq!(ImageFormat::sniff(b"GIF89a"), None);
    }

    #[test]
    fn debug_hides_payload() {
        assert_eq!(
            format!("{:?}", Base64Bytes(vec![1, 2, 3])),
            "Base64Bytes(3 bytes)"
        );
    }
}
