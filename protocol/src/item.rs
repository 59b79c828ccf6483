//! Conversation items and their content parts.
//!
//! One type serves both directions: a client's `conversation.item.create` carries the
//! media bytes, the server's echo in `conversation.item.added` leaves them out (only
//! ids, roles, text and transcripts come back), which is why media fields are optional
//! here and required by the parser's checks.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::media::{Base64Bytes, DataUrlImage, ImageFormat};

/// The `object` tag of an item.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ItemObject {
    /// `"realtime.item"`.
    #[default]
    #[serde(rename = "realtime.item")]
    RealtimeItem,
}

/// Item kinds; only messages are supported (no function calls).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemType {
    /// A message from the user or the assistant.
    #[default]
    Message,
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The person talking to the model.
    User,
    /// The model.
    Assistant,
    /// Instructions; not accepted from clients as items.
    System,
}

/// Progress of an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ItemStatus {
    /// Fully received or generated.
    Completed,
    /// Cut short (cancelled or truncated).
    Incomplete,
    /// Still being generated.
    InProgress,
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    /// User text.
    InputText {
        /// The text.
        text: String,
    },
    /// User audio: PCM16 mono at the session rate.
    InputAudio {
        /// The audio bytes; required from clients, left out in server echoes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        audio: Option<Base64Bytes>,
        /// A transcript, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        transcript: Option<String>,
    },
    /// A user image as a `data:image/jpeg;base64,...` or `data:image/png;...` URL.
    InputImage {
        /// The data URL; required from clients, left out in server echoes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image_url: Option<String>,
        /// `auto`, `low` or `high`; accepted and ignored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
    /// Assistant text.
    OutputText {
        /// The text.
        text: String,
    },
}

impl ContentPart {
    /// A text part.
    pub fn text(text: impl Into<String>) -> Self {
        ContentPart::InputText { text: text.into() }
    }

    /// An audio part from PCM16 little-endian bytes.
    pub fn audio(pcm16: Vec<u8>) -> Self {
        ContentPart::InputAudio {
            audio: Some(Base64Bytes(pcm16)),
            transcript: None,
        }
    }

    /// An image part from encoded JPEG or PNG bytes.
    pub fn image(format: ImageFormat, bytes: Vec<u8>) -> Self {
        ContentPart::InputImage {
            image_url: Some(DataUrlImage { format, bytes }.to_url()),
            detail: None,
        }
    }

    /// The same part without its media bytes, as the server echoes it.
    pub fn without_media(&self) -> Self {
        match self {
            ContentPart::InputAudio { transcript, .. } => ContentPart::InputAudio {
                audio: None,
                transcript: transcript.clone(),
            },
            ContentPart::InputImage { detail, .. } => ContentPart::InputImage {
                image_url: None,
                detail: detail.clone(),
            },
            other => other.clone(),
        }
    }
}

/// A conversation item (a message).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Item {
    /// Item id; the server assigns one when the client gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `"realtime.item"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ItemObject>,
    /// Always `"message"`.
    #[serde(rename = "type")]
    pub kind: ItemType,
    /// Progress; set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ItemStatus>,
    /// The author.
    pub role: Role,
    /// The parts, in order.
    pub content: Vec<ContentPart>,
}

impl Item {
    /// A user message.
    pub fn user(content: Vec<ContentPart>) -> Self {
        Item {
            id: None,
            object: None,
            kind: ItemType::Message,
            status: None,
            role: Role::User,
            content,
        }
    }

    /// An assistant message as the server announces it.
    pub fn assistant(id: impl Into<String>, status: ItemStatus, text: Option<String>) -> Self {
        Item {
            id: Some(id.into()),
            object: Some(ItemObject::RealtimeItem),
            kind: ItemType::Message,
            status: Some(status),
            role: Role::Assistant,
            content: text
                .map(|text| ContentPart::OutputText { text })
                .into_iter()
                .collect(),
        }
    }

    /// The same item without media bytes, for echoing back to the client.
    pub fn without_media(&self) -> Self {
        Item {
            content: self
                .content
                .iter()
                .map(ContentPart::without_media)
                .collect(),
            ..self.clone()
        }
    }
}
