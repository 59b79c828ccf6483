//! Responses: their status, token usage and the modality report.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ErrorType};
use crate::item::Item;
use crate::session::{FillPolicy, MaxTokens, Modality};

/// The `object` tag of a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ResponseObject {
    /// `"realtime.response"`.
    #[default]
    #[serde(rename = "realtime.response")]
    RealtimeResponse,
}

/// Where a response stands; all but `in_progress` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseStatus {
    /// Generating.
    InProgress,
    /// Finished normally.
    Completed,
    /// Stopped by `response.cancel` or by new speech.
    Cancelled,
    /// Stopped at a limit (`max_output_tokens`).
    Incomplete,
    /// Stopped by an error.
    Failed,
}

/// Why a response ended the way it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusReason {
    /// New speech started (server VAD with `interrupt_response`).
    TurnDetected,
    /// The client sent `response.cancel`.
    ClientCancelled,
    /// The output token cap was reached.
    MaxOutputTokens,
    /// The session ended while generating.
    SessionClosed,
}

/// The error of a failed response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResponseError {
    /// Category.
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Details of a final status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusDetails {
    /// Same as the response's status.
    #[serde(rename = "type")]
    pub kind: ResponseStatus,
    /// Why, for `cancelled` and `incomplete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<StatusReason>,
    /// What failed, for `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ResponseError>,
}

/// Input tokens by modality.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InputTokenDetails {
    /// Text tokens.
    pub text_tokens: u32,
    /// Audio embedding positions.
    pub audio_tokens: u32,
    /// Image and video embedding positions.
    pub image_tokens: u32,
}

/// Token counts of one response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Usage {
    /// Prompt positions, all modalities.
    pub input_tokens: u32,
    /// Generated tokens.
    pub output_tokens: u32,
    /// The sum of both.
    pub total_tokens: u32,
    /// Input tokens by modality.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_token_details: Option<InputTokenDetails>,
}

impl Usage {
    /// Usage with the total filled in.
    pub fn new(input_tokens: u32, output_tokens: u32) -> Self {
        Usage {
            input_tokens,
            output_tokens,
            total_tokens: input_tokens.saturating_add(output_tokens),
            input_token_details: None,
        }
    }
}

/// An input modality, as the modality report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InputModality {
    /// Text parts.
    Text,
    /// Audio buffer and audio parts.
    Audio,
    /// Images in conversation items.
    Image,
    /// `mmrt.input_video.frame` frames.
    Video,
}

/// What the model saw of one modality.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModalityStatus {
    /// New input arrived in this turn and was used.
    Present,
    /// No new input this turn; the last input, younger than `max_age_ms`, was reused.
    Stale,
    /// No usable input; the policy synthesized it (`completion` or `null`).
    Filled,
    /// No usable input and nothing in its place (`omit`, or never sent).
    Missing,
}

/// The state of one modality for one response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ModalityState {
    /// Which modality.
    pub modality: InputModality,
    /// What the model saw.
    pub status: ModalityStatus,
    /// The fill policy that acted, for `stale`, `filled` and `missing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill: Option<FillPolicy>,
    /// Age of the newest input of this modality when the response started, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
}

/// mmrt extension fields of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResponseExt {
    /// One entry per input modality; the same list as `mmrt.modality_report`.
    pub modality_report: Vec<ModalityState>,
}

/// A response, as `response.created` and `response.done` carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Response {
    /// Server-assigned response id.
    pub id: String,
    /// `"realtime.response"`.
    pub object: ResponseObject,
    /// Progress or outcome.
    pub status: ResponseStatus,
    /// Why it ended, for final statuses other than `completed`.
    #[serde(default)]
    pub status_details: Option<StatusDetails>,
    /// Output items (one assistant message).
    pub output: Vec<Item>,
    /// Always `["text"]`.
    pub output_modalities: Vec<Modality>,
    /// The token cap it ran with.
    pub max_output_tokens: MaxTokens,
    /// Token counts; set in `response.done`.
    #[serde(default)]
    pub usage: Option<Usage>,
    /// mmrt extensions; set in `response.done`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmrt: Option<ResponseExt>,
}

impl Response {
    /// A response that has just started.
    pub fn in_progress(id: impl Into<String>, max_output_tokens: u32) -> Self {
        Response {
            id: id.into(),
            object: ResponseObject::RealtimeResponse,
            status: ResponseStatus::InProgress,
            status_details: None,
            output: Vec::new(),
            output_modalities: vec![Modality::Text],
            max_output_tokens: MaxTokens::Count(max_output_tokens),
            usage: None,
            mmrt: None,
        }
    }
}
