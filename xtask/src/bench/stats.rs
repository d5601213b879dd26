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

/// The median of per-round ratios `a[i] / b[i]` over the rounds where both exist. Pairing runs
/// of the same round cancels the drift a shared machine adds between rounds.
pub fn median_paired_ratio(
    numerators: &[Option<f64>],
    denominators: &[Option<f64>],
) -> Option<f64> {
    let ratios: Vec<f64> = numerators
        .iter()
        .zip(denominators)
        .filter_map(|(numerator, denominator)| ratio((*numerator)?, (*denominator)?))
        .collect();
    median(&ratios)
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
    fn paired_ratio_skips_rounds_missing_either_side() {
        let traced = [Some(90.0), None, Some(80.0), Some(99.0)];
        let untraced = [Some(100.0), Some(100.0), Some(100.0), None];
        // Rounds 0 and 2 pair up: 0.9 and 0.8.
        let paired = median_paired_ratio(&traced, &untraced).unwrap();
        assert!((paired - 0.85).abs() < 1e-12, "{paired}");
    }
}
