//! Binary WebSocket frames: media without base64.
//!
//! A binary message is a fixed 24-byte little-endian header followed by the payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | magic `0x6D` (`m`) |
//! | 1 | 1 | version, [`BINARY_VERSION`] |
//! | 2 | 1 | kind, see [`FrameKind`] |
//! | 3 | 1 | flags, see [`FLAG_COMMIT`]; other bits must be 0 |
//! | 4 | 4 | sequence number (u32), per kind, wraps |
//! | 8 | 8 | timestamp_ms (u64), client clock |
//! | 16 | 2 | width (u16), pixels; raw RGB only, else 0 (a hint for JPEG/PNG) |
//! | 18 | 2 | height (u16), same rules |
//! | 20 | 4 | payload length (u32), must equal the bytes that follow |
//!
//! The encoder checks the same rules as the decoder, so whatever it produces decodes.

use crate::error::{ErrorCode, ProtocolError};

/// First byte of every binary frame.
pub const BINARY_MAGIC: u8 = 0x6D;

/// Version of the binary header layout.
pub const BINARY_VERSION: u8 = 1;

/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 24;

/// Audio kinds only: commit the input audio buffer after appending this payload, as
/// `input_audio_buffer.commit` would.
pub const FLAG_COMMIT: u8 = 0x01;

const KNOWN_FLAGS: u8 = FLAG_COMMIT;

/// What a binary frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// PCM16 little-endian mono at the session rate; same as `input_audio_buffer.append`.
    AudioPcm16 = 1,
    /// One mono Opus packet (any Opus rate; decoded at the session rate).
    AudioOpus = 2,
    /// One JPEG video frame.
    VideoJpeg = 16,
    /// One PNG video frame.
    VideoPng = 17,
    /// One raw 8-bit RGB video frame, `width * height * 3` bytes.
    VideoRawRgb = 18,
}

impl FrameKind {
    /// Every kind, for tests and documentation.
    pub const ALL: [FrameKind; 5] = [
        FrameKind::AudioPcm16,
        FrameKind::AudioOpus,
        FrameKind::VideoJpeg,
        FrameKind::VideoPng,
        FrameKind::VideoRawRgb,
    ];

    /// The kind for a header byte.
    pub fn from_byte(byte: u8) -> Option<FrameKind> {
        FrameKind::ALL.into_iter().find(|kind| *kind as u8 == byte)
    }

    /// Whether the payload is audio.
    pub fn is_audio(self) -> bool {
        matches!(self, FrameKind::AudioPcm16 | FrameKind::AudioOpus)
    }
}

/// Why a binary frame was refused; all are `invalid_binary_frame` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than the header.
    #[error("binary frame of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    /// The first byte is not [`BINARY_MAGIC`].
    #[error("bad magic byte {0:#04x}")]
    BadMagic(u8),
    /// A header version this build does not read.
    #[error("unsupported binary frame version {0}")]
    UnsupportedVersion(u8),
    /// An unknown kind byte.
    #[error("unknown binary frame kind {0}")]
    UnknownKind(u8),
    /// Reserved flag bits set, or a flag on a kind it does not apply to.
    #[error("flags {flags:#04x} not valid for {kind:?}")]
    BadFlags {
        /// The kind.
        kind: FrameKind,
        /// The flags byte.
        flags: u8,
    },
    /// Dimensions missing, present where they must not be, or not matching the payload.
    #[error("bad dimensions {width}x{height} for {kind:?}: {reason}")]
    BadDims {
        /// The kind.
        kind: FrameKind,
        /// Width from the header.
        width: u16,
        /// Height from the header.
        height: u16,
        /// What is wrong.
        reason: &'static str,
    },
    /// The header's payload length differs from the bytes that follow.
    #[error("header says {declared} payload bytes, frame has {actual}")]
    PayloadLengthMismatch {
        /// From the header.
        declared: u32,
        /// Actually present.
        actual: usize,
    },
    /// A PCM16 payload with an odd byte count.
    #[error("PCM16 payload of {0} bytes is not a whole number of samples")]
    OddPcmLength(usize),
    /// A video frame without bytes.
    #[error("empty video payload")]
    EmptyPayload,
    /// A payload too large for the 32-bit length field (encoder only).
    #[error("payload of {0} bytes does not fit the length field")]
    PayloadTooLarge(usize),
}

impl FrameError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::InvalidBinaryFrame
    }
}

impl From<FrameError> for ProtocolError {
    fn from(err: FrameError) -> Self {
        ProtocolError::new(err.code(), err.to_string())
    }
}

/// The decoded header fields (the payload length is implied by the payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// What the payload is.
    pub kind: FrameKind,
    /// [`FLAG_COMMIT`] or 0.
    pub flags: u8,
    /// Sequence number per kind.
    pub sequence: u32,
    /// Client timestamp in ms.
    pub timestamp_ms: u64,
    /// Width in pixels (raw RGB; optional hint for JPEG/PNG; 0 for audio).
    pub width: u16,
    /// Height in pixels, same rules.
    pub height: u16,
}

impl FrameHeader {
    /// An audio header.
    pub fn audio(kind: FrameKind, sequence: u32, timestamp_ms: u64) -> Self {
        FrameHeader {
            kind,
            flags: 0,
            sequence,
            timestamp_ms,
            width: 0,
            height: 0,
        }
    }

    /// A video header; dimensions may be 0 for JPEG and PNG.
    pub fn video(
        kind: FrameKind,
        sequence: u32,
        timestamp_ms: u64,
        width: u16,
        height: u16,
    ) -> Self {
        FrameHeader {
            kind,
            flags: 0,
            sequence,
            timestamp_ms,
            width,
            height,
        }
    }

    /// Whether [`FLAG_COMMIT`] is set.
    pub fn commit(&self) -> bool {
        self.flags & FLAG_COMMIT != 0
    }

    /// Checks the header against a payload length.
    fn check(&self, payload_len: usize) -> Result<(), FrameError> {
        let (kind, width, height) = (self.kind, self.width, self.height);
        if self.flags & !KNOWN_FLAGS != 0 || (self.commit() && !kind.is_audio()) {
            return Err(FrameError::BadFlags {
                kind,
                flags: self.flags,
            });
        }
        let bad_dims = |reason| FrameError::BadDims {
            kind,
            width,
            height,
            reason,
        };
        match kind {
            FrameKind::AudioPcm16 | FrameKind::AudioOpus => {
                if width != 0 || height != 0 {
                    return Err(bad_dims("audio frames carry no dimensions"));
                }
                if kind == FrameKind::AudioPcm16 && !payload_len.is_multiple_of(2) {
                    return Err(FrameError::OddPcmLength(payload_len));
                }
            }
            FrameKind::VideoJpeg | FrameKind::VideoPng => {
                if (width == 0) != (height == 0) {
                    return Err(bad_dims("give both dimensions or neither"));
                }
                if payload_len == 0 {
                    return Err(FrameError::EmptyPayload);
                }
            }
            FrameKind::VideoRawRgb => {
                if width == 0 || height == 0 {
                    return Err(bad_dims("raw RGB needs both dimensions"));
                }
                if usize::from(width) * usize::from(height) * 3 != payload_len {
                    return Err(bad_dims("payload is not width * height * 3 bytes"));
                }
            }
        }
        Ok(())
    }
}

/// A decoded frame borrowing its payload from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BinaryFrame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// The payload bytes.
    pub payload: &'a [u8],
}

/// Appends one encoded frame to `out`.
pub fn encode_frame_into(
    header: &FrameHeader,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let payload_len =
        u32::try_from(payload.len()).map_err(|_| FrameError::PayloadTooLarge(payload.len()))?;
    header.check(payload.len())?;
    out.reserve(HEADER_LEN + payload.len());
    out.push(BINARY_MAGIC);
    out.push(BINARY_VERSION);
    out.push(header.kind as u8);
    out.push(header.flags);
    out.extend_from_slice(&header.sequence.to_le_bytes());
    out.extend_from_slice(&header.timestamp_ms.to_le_bytes());
    out.extend_from_slice(&header.width.to_le_bytes());
    out.extend_from_slice(&header.height.to_le_bytes());
    out.extend_from_slice(&payload_len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Encodes one frame.
pub fn encode_frame(header: &FrameHeader, payload: &[u8]) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_frame_into(header, payload, &mut out)?;
    Ok(out)
}

/// Decodes one binary message. Never panics, whatever the bytes.
pub fn decode_frame(bytes: &[u8]) -> Result<BinaryFrame<'_>, FrameError> {
    let Some((head, payload)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::TooShort(bytes.len()));
    };
    if head[0] != BINARY_MAGIC {
        return Err(FrameError::BadMagic(head[0]));
    }
    if head[1] != BINARY_VERSION {
        return Err(FrameError::UnsupportedVersion(head[1]));
    }
    let kind = FrameKind::from_byte(head[2]).ok_or(FrameError::UnknownKind(head[2]))?;

    // Fixed offsets inside a fixed-size array: these conversions cannot fail.
    let u16_at = |at: usize| u16::from_le_bytes([head[at], head[at + 1]]);
    let u32_at = |at: usize| {
        u32::from_le_bytes(
            head[at..at + 4]
                .try_into()
                .expect("4 bytes inside the header"),
        )
    };
    let timestamp_ms =
        u64::from_le_bytes(head[8..16].try_into().expect("8 bytes inside the header"));
    let header = FrameHeader {
        kind,
        flags: head[3],
        sequence: u32_at(4),
        timestamp_ms,
        width: u16_at(16),
        height: u16_at(18),
    };
    let declared = u32_at(20);
    if u64::from(declared) != payload.len() as u64 {
        return Err(FrameError::PayloadLengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    header.check(payload.len())?;
    Ok(BinaryFrame { header, payload })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    fn random_valid(rng: &mut Rng) -> (FrameHeader, Vec<u8>) {
        let kind = FrameKind::ALL[rng.below(5) as usize];
        let sequence = rng.next() as u32;
        let timestamp_ms = rng.next();
        match kind {
            FrameKind::AudioPcm16 | FrameKind::AudioOpus => {
                let mut header = FrameHeader::audio(kind, sequence, timestamp_ms);
                if rng.below(4) == 0 {
                    header.flags = FLAG_COMMIT;
                }
                let len = rng.below(2000) as usize;
                let len = if kind == FrameKind::AudioPcm16 {
                    len & !1
                } else {
                    len
                };
                (header, rng.bytes(len))
            }
            FrameKind::VideoJpeg | FrameKind::VideoPng => {
                let (w, h) = if rng.below(2) == 0 {
                    (0, 0)
                } else {
                    (1 + rng.below(4000) as u16, 1 + rng.below(4000) as u16)
                };
                let len = 1 + rng.below(3000) as usize;
                (
                    FrameHeader::video(kind, sequence, timestamp_ms, w, h),
                    rng.bytes(len),
                )
            }
            FrameKind::VideoRawRgb => {
                let (w, h) = (1 + rng.below(40) as u16, 1 + rng.below(40) as u16);
                let len = usize::from(w) * usize::from(h) * 3;
                (
                    FrameHeader::video(kind, sequence, timestamp_ms, w, h),
                    rng.bytes(len),
                )
            }
        }
    }

    #[test]
    fn seeded_round_trips() {
        let mut rng = Rng(0x5EED_1234_ABCD_0001);
        for _ in 0..2000 {
            let (header, payload) = random_valid(&mut rng);
            let bytes = encode_frame(&header, &payload).expect("valid frame encodes");
            assert_eq!(bytes.len(), HEADER_LEN + payload.len());
            let frame = decode_frame(&bytes).expect("encoded frame decodes");
            assert_eq!(frame.header, header);
            assert_eq!(frame.payload, &payload[..]);
        }
    }

    #[test]
    fn seeded_corruption_never_panics() {
        let mut rng = Rng(0xC0FF_EE00_0000_0042);
        for _ in 0..5000 {
            let (header, payload) = random_valid(&mut rng);
            let mut bytes = encode_frame(&header, &payload).expect("valid frame encodes");
            match rng.below(3) {
                0 => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
                1 => {
                    let at = rng.below(HEADER_LEN as u64) as usize;
                    bytes[at] = rng.next() as u8;
                }
                _ => {
                    let len = rng.below(64) as usize;
                    bytes = rng.bytes(len);
                }
            }
            // Whatever decodes must re-encode to the same bytes.
            if let Ok(frame) = decode_frame(&bytes) {
                let again = encode_frame(&frame.header, frame.payload).expect("decoded is valid");
                assert_eq!(again, bytes);
            }
        }
    }

    fn pcm_frame() -> Vec<u8> {
        encode_frame(
            &FrameHeader::audio(FrameKind::AudioPcm16, 7, 140),
            &[0; 640],
        )
        .expect("valid frame encodes")
    }

    #[test]
    fn each_error_kind() {
        assert_eq!(
            decode_frame(&[BINARY_MAGIC; 5]),
            Err(FrameError::TooShort(5))
        );

        let mut bytes = pcm_frame();
        bytes[0] = 0x00;
        assert_eq!(decode_frame(&bytes), Err(FrameError::BadMagic(0)));

        let mut bytes = pcm_frame();
        bytes[1] = 9;
        assert_eq!(decode_frame(&bytes), Err(FrameError::UnsupportedVersion(9)));

        let mut bytes = pcm_frame();
        bytes[2] = 99;
        assert_eq!(decode_frame(&bytes), Err(FrameError::UnknownKind(99)));

        let mut bytes = pcm_frame();
        bytes[3] = 0x80;
        assert!(matches!(
            decode_frame(&bytes),
            Err(FrameError::BadFlags { .. })
        ));

        let mut bytes = pcm_frame();
        bytes[16] = 1;
        assert!(matches!(
            decode_frame(&bytes),
            Err(FrameError::BadDims { .. })
        ));

        let mut bytes = pcm_frame();
        bytes.push(0);
        assert_eq!(
            decode_frame(&bytes),
            Err(FrameError::PayloadLengthMismatch {
                declared: 640,
                actual: 641
            })
        );

        let header = FrameHeader::audio(FrameKind::AudioPcm16, 0, 0);
        assert_eq!(
            encode_frame(&header, &[0; 3]),
            Err(FrameError::OddPcmLength(3))
        );

        let raw = FrameHeader::video(FrameKind::VideoRawRgb, 0, 0, 2, 2);
        assert!(matches!(
            encode_frame(&raw, &[0; 11]),
            Err(FrameError::BadDims { .. })
        ));
        let jpeg = FrameHeader::video(FrameKind::VideoJpeg, 0, 0, 0, 0);
        assert_eq!(encode_frame(&jpeg, &[]), Err(FrameError::EmptyPayload));
        let mut commit_video = jpeg;
        commit_video.flags = FLAG_COMMIT;
        assert!(matches!(
            encode_frame(&commit_video, &[1]),
            Err(FrameError::BadFlags { .. })
        ));

        let err: ProtocolError = FrameError::EmptyPayload.into();
        assert_eq!(err.code, ErrorCode::InvalidBinaryFrame);
    }

    #[test]
    fn header_layout_is_as_documented() {
        let mut header = FrameHeader::video(FrameKind::VideoRawRgb, 0x0102_0304, 0x1122, 1, 2);
        header.flags = 0;
        let bytes = encode_frame(&header, &[9; 6]).expect("valid frame encodes");
        assert_eq!(
            &bytes[..HEADER_LEN],
            &[
                0x6D, 1, 18, 0, // magic, version, kind, flags
                4, 3, 2, 1, // sequence
                0x22, 0x11, 0, 0, 0, 0, 0, 0, // timestamp_ms
                1, 0, 2, 0, // width, height
                6, 0, 0, 0, // payload length
            ]
        );
    }
}
