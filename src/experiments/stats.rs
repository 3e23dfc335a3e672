//! Small-sample statistics for studies over seeds: mean, sample standard deviation, Student-t 95%
//! confidence intervals, and differences paired by seed with a plain verdict.

/// Two-sided 95% quantiles t_{0.975, df} for df = 1..=30 (the standard table).
const T975: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
];

/// t_{0.975, df}: the table up to 30 degrees of freedom, then the Cornish-Fisher expansion around
/// the normal quantile (error < 1e-4 there). `None` for df = 0 (one sample: no interval).
pub fn t975(df: usize) -> Option<f64> {
    match df {
        0 => None,
        1..=30 => Some(T975[df - 1]),
        _ => {
            let z: f64 = 1.959_963_985;
            let n = df as f64;
            Some(
                z + (z.powi(3) + z) / (4.0 * n)
                    + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n),
            )
        }
    }
}

/// Mean, sample standard deviation (n - 1) and the 95% confidence interval of the mean.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// NaN for n < 2.
    pub sd: f64,
    /// Half-width of the 95% interval, mean ± ci95 (t-based); NaN for n < 2.
    pub ci95: f64,
}

impl Summary {
    /// Over the finite values of `xs` (a diverged run's NaN is not a sample).
    pub fn of(xs: &[f64]) -> Self {
        let xs: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
        let n = xs.len();
        if n == 0 {
            return Self { n, mean: f64::NAN, sd: f64::NAN, ci95: f64::NAN };
        }
        let mean = xs.iter().sum::<f64>() / n as f64;
        if n < 2 {
            return Self { n, mean, sd: f64::NAN, ci95: f64::NAN };
        }
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let sd = var.sqrt();
        let ci95 = t975(n - 1).map_or(f64::NAN, |t| t * sd / (n as f64).sqrt());
        Self { n, mean, sd, ci95 }
    }

    pub fn low(&self) -> f64 {
        self.mean - self.ci95
    }

    pub fn high(&self) -> f64 {
        self.mean + self.ci95
    }
}

/// Whether larger values of a metric are better (accuracy) or smaller (loss).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// The verdict on a paired difference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Better,
    Worse,
    /// The 95% interval contains 0.
    NotDistinguishable,
    /// Fewer than two pairs, or pairs whose differences are all equal (zero spread: the interval
    /// collapses to a point and says nothing about the runs' noise): no verdict.
    NotEnoughRuns,
}

impl Verdict {
    pub fn words(self, pairs: usize) -> String {
        match self {
            Verdict::Better => "better".into(),
            Verdict::Worse => "worse".into(),
            Verdict::NotDistinguishable => format!("not distinguishable at n = {pairs}"),
            Verdict::NotEnoughRuns if pairs < 2 => format!("not enough runs (n = {pairs})"),
            Verdict::NotEnoughRuns => format!("not enough runs (n = {pairs}, zero spread)"),
        }
    }
}

/// The difference variant - baseline paired by seed: its summary over the pairs where both are
/// finite, and the verdict from its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    pub diff: Summary,
    pub verdict: Verdict,
}

/// `variant` and `baseline` are aligned by seed (same index, same seed); pairs with a non-finite
/// side are dropped.
pub fn paired(variant: &[f64], baseline: &[f64], better: Better) -> Paired {
    let diffs: Vec<f64> = variant
        .iter()
        .zip(baseline)
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .map(|(a, b)| a - b)
        .collect();
    let diff = Summary::of(&diffs);
    // sd is NaN below two pairs; 0 when every difference is equal.
    let spread = diff.sd.is_finite() && diff.sd > 0.0;
    let verdict = if diff.n < 2 || !spread || !diff.ci95.is_finite() {
        Verdict::NotEnoughRuns
    } else if diff.low() > 0.0 {
        if better == Better::Higher {
            Verdict::Better
        } else {
            Verdict::Worse
        }
    } else if diff.high() < 0.0 {
        if better == Better::Higher {
            Verdict::Worse
        } else {
            Verdict::Better
        }
    } else {
        Verdict::NotDistinguishable
    };
    Paired { diff, verdict }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_matches_closed_forms() {
        // 1, 2, 3, 4, 5: mean 3, variance 2.5, sd 1.5811, t(4) = 2.776, ci = 2.776 * 1.5811 / sqrt 5.
        let s = Summary::of(&[1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!((s.n, s.mean), (5, 3.0));
        assert!((s.sd - 2.5f64.sqrt()).abs() < 1e-12);
        assert!((s.ci95 - 2.776 * 2.5f64.sqrt() / 5f64.sqrt()).abs() < 1e-12);
        // Non-finite values are not samples; one sample has no spread.
        let one = Summary::of(&[f64::NAN, 7.0]);
        assert_eq!((one.n, one.mean), (1, 7.0));
        assert!(one.sd.is_nan() && one.ci95.is_nan());
        assert!(Summary::of(&[]).mean.is_nan());
    }

    #[test]
    fn t_quantiles_match_the_table_and_the_normal_limit() {
        assert_eq!(t975(0), None);
        assert_eq!(t975(2), Some(4.303));
        assert_eq!(t975(30), Some(2.042));
        // Tabulated values beyond 30: 40 -> 2.021, 60 -> 2.000, 120 -> 1.980.
        for (df, want) in [(40, 2.021), (60, 2.000), (120, 1.980)] {
            let t = t975(df).unwrap();
            assert!((t - want).abs() < 1e-3, "t975({df}) = {t}, want {want}");
        }
        assert!((t975(1_000_000).unwrap() - 1.959_964).abs() < 1e-5);
    }

    #[test]
    fn paired_differences_and_verdicts() {
        // Differences 1, 2, 3: mean 2, sd 1, ci = 4.303 / sqrt 3 = 2.484: the interval holds 0.
        let p = paired(&[11.0, 12.0, 13.0], &[10.0, 10.0, 10.0], Better::Higher);
        assert_eq!((p.diff.n, p.diff.mean), (3, 2.0));
        assert!((p.diff.ci95 - 4.303 / 3f64.sqrt()).abs() < 1e-12);
        assert_eq!(p.verdict, Verdict::NotDistinguishable);
        // Two identical differences: a collapsed interval [5, 5] is no verdict; nor is one pair.
        let p = paired(&[15.0, 16.0], &[10.0, 11.0], Better::Higher);
        assert_eq!(
            (p.verdict, p.verdict.words(2).as_str()),
            (Verdict::NotEnoughRuns, "not enough runs (n = 2, zero spread)")
        );
        assert_eq!(paired(&[15.0], &[10.0], Better::Higher).verdict.words(1), "not enough runs (n = 1)");
        // Differences 2.0, 2.1, 1.9: mean 2, sd 0.1: clearly above 0.
        let p = paired(&[12.0, 12.1, 11.9], &[10.0, 10.0, 10.0], Better::Higher);
        assert_eq!(p.verdict, Verdict::Better);
        assert_eq!(paired(&[12.0, 12.1, 11.9], &[10.0, 10.0, 10.0], Better::Lower).verdict, Verdict::Worse);
        assert_eq!(paired(&[8.0, 7.9, 8.1], &[10.0, 10.0, 10.0], Better::Higher).verdict, Verdict::Worse);
        // Pairing matters: the same numbers unpaired would overlap, paired they differ.
        let base = [70.0, 75.0, 80.0];
        let var = [70.5, 75.4, 80.6];
        assert_eq!(paired(&var, &base, Better::Higher).verdict, Verdict::Better);
        let (a, b) = (Summary::of(&var), Summary::of(&base));
        assert!(a.low() < b.high(), "unpaired intervals overlap");
        // A diverged run drops its pair; one pair left is not enough.
        let p = paired(&[f64::NAN, 75.4], &[70.0, 75.0], Better::Higher);
        assert_eq!((p.diff.n, p.verdict), (1, Verdict::NotEnoughRuns));
    }
}
