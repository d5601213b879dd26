//! Medians and ratios: every figure the benchmark reports is one of these over interleaved runs,
//! because absolute times on a shared machine drift between runs.

/// The median of `values` (the mean of the two middle ones for an even count); `None` when empty
/// or when a value is not a number.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|value| value.is_nan()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    })
}

/// `numerator / denominator`, or `None` when the quotient is meaningless (zero, negative or
/// non-finite denominator, non-finite numerator).
pub fn ratio(numerator: f64, denominator: f64) -> Option<f64> {
    (numerator.is_finite() && denominator.is_finite() && denominator > 0.0)
        .then(|| numerator / denominator)
}

/// The per-round ratios `a[i] / b[i]` of the rounds where both exist. Pairing runs of the
/// same round cancels the drift a shared machine adds between rounds.
pub fn paired_ratios(numerators: &[Option<f64>], denominators: &[Option<f64>]) -> Vec<f64> {
    numerators
        .iter()
        .zip(denominators)
        .filter_map(|(numerator, denominator)| ratio((*numerator)?, (*denominator)?))
        .collect()
}

/// Where the true median of what `values` sample lies, from the values alone (no assumption
/// about their distribution): between two order statistics, `low` and `high`, with probability
/// `confidence`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MedianInterval {
    pub low: f64,
    pub high: f64,
    pub confidence: f64,
}

/// The narrowest interval between order statistics that holds the median with at least 95%
/// confidence, or else the widest one (smallest to largest value: 94% for 5 values). `None`
/// below 90% (fewer than 5 values: too few to say) or for a value that is not a number.
pub fn median_interval(values: &[f64]) -> Option<MedianInterval> {
    if values.len() < 5 || values.iter().any(|value| value.is_nan()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // The median lies outside [x(k), x(n+1-k)] (1-based) when at most k-1 values fall below
    // it or at most k-1 above: each side has the probability that Binomial(n, 1/2) <= k-1.
    let confidence = |k: usize| 1.0 - 2.0 * binomial_half_cdf(n, k - 1);
    let mut k = 1;
    while k < n / 2 && confidence(k + 1) >= 0.95 {
        k += 1;
    }
    Some(MedianInterval {
        low: sorted[k - 1],
        high: sorted[n - k],
        confidence: confidence(k),
    })
}

/// P(Binomial(n, 1/2) <= at_most).
fn binomial_half_cdf(n: usize, at_most: usize) -> f64 {
    let mut term = 0.5f64.powi(n as i32); // P(X = 0)
    let mut sum = 0.0;
    for successes in 0..=at_most.min(n) {
        sum += term;
        // P(X = j + 1) = P(X = j) * (n - j) / (j + 1)
        term *= (n - successes) as f64 / (successes + 1) as f64;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn median_of_nothing_or_of_nan_is_none() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn ratio_refuses_a_zero_or_infinite_denominator() {
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(1.0, f64::INFINITY), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn the_median_interval_is_the_narrowest_with_95_percent() {
        // Nine values: [x(2), x(8)] holds the median with 1 - 2 * 10/512 = 96.1%; [x(3), x(7)]
        // only with 82%.
        let values = [9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0];
        let interval = median_interval(&values).unwrap();
        assert_eq!((interval.low, interval.high), (2.0, 8.0));
        assert!((interval.confidence - (1.0 - 20.0 / 512.0)).abs() < 1e-12);
    }

    #[test]
    fn few_values_give_their_whole_range_with_its_lower_confidence() {
        let interval = median_interval(&[3.0, 1.0, 2.0, 5.0, 4.0]).unwrap();
        assert_eq!((interval.low, interval.high), (1.0, 5.0));
        assert!((interval.confidence - (1.0 - 2.0 / 32.0)).abs() < 1e-12);
        assert_eq!(median_interval(&[1.0, 2.0, 3.0, 4.0]), None);
        assert_eq!(median_interval(&[1.0, 2.0, 3.0, 4.0, f64::NAN]), None);
    }

    #[test]
    fn paired_ratio_skips_rounds_missing_either_side() {
        let traced = [Some(90.0), None, Some(80.0), Some(99.0)];
        let untraced = [Some(100.0), Some(100.0), Some(100.0), None];
        // Rounds 0 and 2 pair up: 0.9 and 0.8.
        let paired = median(&paired_ratios(&traced, &untraced)).unwrap();
        assert!((paired - 0.85).abs() < 1e-12, "{paired}");
    }
}
