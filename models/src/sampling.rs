//! Choosing the next token: greedy, or temperature with top-k and top-p under a seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick tokens; `temperature == 0` is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the smallest set whose probability reaches `top_p`; 1 keeps all.
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// A per-response sampler; owns its random state so runs with one seed repeat.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let rng = StdRng::seed_from_u64(params.seed);
        Sampler { params, rng }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token id from one position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 || logits.len() < 2 {
            return argmax(logits);
        }
        let mut candidates: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, l)| l.is_finite())
            .map(|(i, l)| (i as u32, *l / self.params.temperature))
            .collect();
        if candidates.is_empty() {
            return 0;
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        if self.params.top_k > 0 {
            candidates.truncate(self.params.top_k);
        }
        // Softmax over what is left.
        let max = candidates[0].1;
        let mut total = 0.0f64;
        for c in candidates.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += c.1 as f64;
        }
        if self.params.top_p < 1.0 {
            let mut mass = 0.0f64;
            let mut keep = candidates.len();
            for (i, c) in candidates.iter().enumerate() {
                mass += c.1 as f64 / total;
                if mass >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            candidates.truncate(keep);
            total = candidates.iter().map(|c| c.1 as f64).sum();
        }
        let mut draw = self.rng.random::<f64>() * total;
        for (id, weight) in &candidates {
            draw -= *weight as f64;
            if draw <= 0.0 {
                return *id;
            }
        }
        candidates[candidates.len() - 1].0
    }
}

/// Index of the largest value; the first one on ties, NaN never wins.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_value = f32::NEG_INFINITY;
    for (i, v) in values.iter().enumerate() {
        if *v > best_value {
            best = i;
            best_value = *v;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, f32::NAN]), 1);
    }

    #[test]
    fn the_same_seed_repeats_and_top_k_limits() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let params = SamplingParams {
            temperature: 1.0,
            top_k: 3,
            top_p: 1.0,
            seed: 42,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(params.clone());
            (0..100).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..100).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() <= 3 && distinct.len() > 1, "{distinct:?}");
        let top = logits.iter().copied().fold(f32::MIN, f32::max);
        assert!(a.iter().all(|id| logits[*id as usize] == top));
    }

    #[test]
    fn top_p_keeps_the_dominant_token() {
        let mut logits = vec![0.0f32; 10];
        logits[4] = 10.0;
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 0.9,
            seed: 1,
        });
        assert!((0..50).all(|_| s.sample(&logits) == 4));
    }
}
