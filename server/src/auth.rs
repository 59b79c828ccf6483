//! Who may open a session: API keys and the Origin allow-list.
//!
//! A key comes in `Authorization: Bearer <key>`, or, from browsers that cannot set
//! headers on a WebSocket, as the subprotocol `openai-insecure-api-key.<key>` next to
//! `realtime` in `Sec-WebSocket-Protocol`, the way OpenAI's realtime browser clients
//! send it. Keys are compared in constant time and never logged.

use axum::http::{header, HeaderMap};
use mmrt_protocol::ErrorCode;

/// The subprotocol prefix that carries a key from a browser.
pub const KEY_SUBPROTOCOL_PREFIX: &str = "openai-insecure-api-key.";

/// The subprotocol the server selects when a browser offers it.
pub const REALTIME_SUBPROTOCOL: &str = "realtime";

/// Why a connection was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("an API key is required (Authorization: Bearer, or the openai-insecure-api-key subprotocol)")]
    MissingKey,
    #[error("the API key is not valid")]
    BadKey,
    #[error("this origin is not allowed")]
    OriginNotAllowed,
}

impl AuthError {
    /// The stable error code, reused as the metric label.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::Unauthorized
    }
}

/// The server's access policy.
#[derive(Clone, Default)]
pub struct Auth {
    keys: Vec<String>,
    origins: Vec<String>,
}

impl Auth {
    pub fn new(keys: Vec<String>, origins: Vec<String>) -> Auth {
        Auth { keys, origins }
    }

    /// Whether clients must present a key.
    pub fn requires_key(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks a handshake's headers.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), AuthError> {
        // Origin: only browsers send it; non-browser clients are judged by key alone.
        if !self.origins.is_empty() {
            if let Some(origin) = headers.get(header::ORIGIN) {
                let origin = origin.to_str().unwrap_or_default().trim_end_matches('/');
                if !self.origins.iter().any(|o| o == origin) {
                    return Err(AuthError::OriginNotAllowed);
                }
            }
        }
        if !self.requires_key() {
            return Ok(());
        }
        let key = bearer_key(headers)
            .or_else(|| subprotocol_key(headers))
            .ok_or(AuthError::MissingKey)?;
        // Compare against every key so the time taken does not say which one matched.
        let mut ok = false;
        for known in &self.keys {
            ok |= constant_time_eq(known.as_bytes(), key.as_bytes());
        }
        if ok {
            Ok(())
        } else {
            Err(AuthError::BadKey)
        }
    }
}

fn bearer_key(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim().to_string())
}

fn subprotocol_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(KEY_SUBPROTOCOL_PREFIX))
        .map(str::to_owned)
}

/// Equal bytes, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).expect("ascii"));
        }
        map
    }

    #[test]
    fn no_keys_means_open() {
        assert_eq!(Auth::default().check(&HeaderMap::new()), Ok(()));
    }

    #[test]
    fn bearer_and_subprotocol_keys() {
        let auth = Auth::new(vec!["sk-a".into(), "sk-b".into()], vec![]);
        assert_eq!(auth.check(&HeaderMap::new()), Err(AuthError::MissingKey));
        let h = headers(&[(header::AUTHORIZATION, "Bearer sk-b")]);
        assert_eq!(auth.check(&h), Ok(()));
        let h = headers(&[(header::AUTHORIZATION, "Bearer sk-c")]);
        assert_eq!(auth.check(&h), Err(AuthError::BadKey));
        let h = headers(&[(
            header::SEC_WEBSOCKET_PROTOCOL,
            "realtime, openai-insecure-api-key.sk-a",
        )]);
        assert_eq!(auth.check(&h), Ok(()));
        let h = headers(&[(header::SEC_WEBSOCKET_PROTOCOL, "realtime")]);
        assert_eq!(auth.check(&h), Err(AuthError::MissingKey));
    }

    #[test]
    fn origins_are_checked_when_listed() {
        let auth = Auth::new(vec![], vec!["https://app.example".into()]);
        let h = headers(&[(header::ORIGIN, "https://app.example")]);
        assert_eq!(auth.check(&h), Ok(()));
        let h = headers(&[(header::ORIGIN, "https://evil.example")]);
        assert_eq!(auth.check(&h), Err(AuthError::OriginNotAllowed));
        assert_eq!(auth.check(&HeaderMap::new()), Ok(()));
    }
}
