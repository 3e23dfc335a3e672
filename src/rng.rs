//! Deterministic randomness with no global state. Every draw in the data path comes from a
//! generator keyed by what it is for (seed, epoch, sample index), never by thread or timing.

/// SplitMix64: small, fast, well mixed; identical on every machine.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// A generator for one purpose, keyed by several integers (e.g. seed, epoch, sample index).
    pub fn keyed(keys: &[u64]) -> Self {
        let mut state = 0x243F_6A88_85A3_08D3u64;
        for &k in keys {
            state = Self(state ^ k).next_u64();
        }
        Self(state)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Gamma(a, 1) by Marsaglia and Tsang (a < 1 through Gamma(a + 1) U^(1/a)).
    pub fn gamma(&mut self, a: f64) -> f64 {
        if a < 1.0 {
            let u = 1.0 - self.uniform();
            return self.gamma(a + 1.0) * u.powf(1.0 / a);
        }
        let d = a - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = (1.0 + c * x).powi(3);
            if v <= 0.0 {
                continue;
            }
            let u = 1.0 - self.uniform();
            if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
                return d * v;
            }
        }
    }

    /// Beta(a, b) as Gamma(a) / (Gamma(a) + Gamma(b)) (1/2 in the measure-zero case that both are 0).
    pub fn beta(&mut self, a: f64, b: f64) -> f64 {
        let (x, y) = (self.gamma(a), self.gamma(b));
        if x + y > 0.0 {
            x / (x + y)
        } else {
            0.5
        }
    }

    /// Dirichlet([alpha; n]): n Gamma(alpha) draws normalised to sum 1 (uniform weights in the
    /// measure-zero case that every draw is 0).
    pub fn dirichlet(&mut self, alpha: f64, n: usize) -> Vec<f64> {
        let g: Vec<f64> = (0..n).map(|_| self.gamma(alpha)).collect();
        let sum: f64 = g.iter().sum();
        if sum > 0.0 {
            g.iter().map(|x| x / sum).collect()
        } else {
            vec![1.0 / n as f64; n]
        }
    }

    /// Uniform integer in [0, n); n > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirichlet_has_the_closed_form_moments() {
        // Dirichlet([a; n]): each component has mean 1/n and variance (1/n)(1 - 1/n) / (n a + 1);
        // AugMix draws its chain weights so (timm: np.random.dirichlet([alpha] * width)).
        for (a, n) in [(1.0, 3), (0.5, 4), (2.0, 2)] {
            let mut rng = SplitMix64::new(7);
            let draws = 40_000;
            let (mut sum, mut sum_sq) = (0.0, 0.0);
            for _ in 0..draws {
                let w = rng.dirichlet(a, n);
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12 && w.iter().all(|&x| x >= 0.0));
                sum += w[0];
                sum_sq += w[0] * w[0];
            }
            let mean = sum / draws as f64;
            let var = sum_sq / draws as f64 - mean * mean;
            let k = n as f64;
            let want_var = (1.0 / k) * (1.0 - 1.0 / k) / (k * a + 1.0);
            assert!((mean - 1.0 / k).abs() < 0.005, "a {a} n {n}: mean {mean}");
            assert!((var / want_var - 1.0).abs() < 0.05, "a {a} n {n}: variance {var} vs {want_var}");
        }
    }
}
