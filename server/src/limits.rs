//! Per-session limits the protocol's `SessionLimits` does not carry: the server-side
//! settings of a session, and the video frame rate limiter.

use std::time::Duration;

use mmrt_protocol::{ErrorCode, ProtocolError};
use tokio::time::Instant;

/// What every session is held to, beyond `SessionLimits`.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Video frames a session may send per second (JSON or binary).
    pub max_frames_per_second: f64,
    /// Events queued for one client before it is closed as a slow consumer.
    pub send_queue: usize,
    /// Longest one WebSocket write may take.
    pub send_timeout: Duration,
    /// Between pings.
    pub ping_interval: Duration,
    /// How long after a ping a client may stay silent.
    pub pong_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_frames_per_second: 60.0,
            send_queue: 512,
            send_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(20),
        }
    }
}

/// A token bucket: `rate` per second on average, bursts of up to one second's worth.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    pub fn new(rate: f64) -> RateLimiter {
        let rate = rate.max(f64::MIN_POSITIVE);
        RateLimiter {
            rate,
            tokens: rate.max(1.0),
            last: Instant::now(),
        }
    }

    /// Takes one token, or says `rate_limited`.
    pub fn take(&mut self) -> Result<(), ProtocolError> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(ProtocolError::new(
                ErrorCode::RateLimited,
                format!(
                    "at most {} video frames a second; this one was dropped",
                    self.rate
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bursts_then_refills() {
        let mut limiter = RateLimiter::new(5.0);
        for _ in 0..5 {
            limiter.take().expect("within the burst");
        }
        let err = limiter.take().expect_err("burst spent");
        assert_eq!(err.code, ErrorCode::RateLimited);
        tokio::time::advance(Duration::from_millis(200)).await;
        limiter.take().expect("one token refilled");
        assert!(limiter.take().is_err());
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..5 {
            limiter.take().expect("refilled to the burst, no more");
        }
        assert!(limiter.take().is_err());
    }
}
