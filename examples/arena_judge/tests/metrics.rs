//! The choice softmax, log loss and accuracy.

#[test]
fn softmax_is_stable_and_sums_to_one() {
    use crate::metrics::softmax3;
    let r = softmax3([0.0, 0.0, 0.0]);
    assert_eq!(r.probs, crate::output::UNIFORM);
    assert!(!r.fallback);
    let r = softmax3([1.0, 2.0, 3.0]);
    let z = 1f64.exp() + 2f64.exp() + 3f64.exp();
    for (p, x) in r.probs.iter().zip([1.0f64, 2.0, 3.0]) {
        assert!((p - x.exp() / z).abs() < 1e-15);
    }
    for logits in [
        [1.0, 2.0, 3.0],
        [3e38, 0.0, -3e38],
        [-1e30, -1e30 + 1e24, -1e30],
        [100.0, 100.5, f32::NEG_INFINITY],
        [12.25, -7.5, 0.125],
    ] {
        let r = softmax3(logits);
        assert!(!r.fallback, "{logits:?}");
        let sum: f64 = r.probs.iter().sum();
        assert!((sum - 1.0).abs() < 1e-12, "{logits:?} -> {:?}", r.probs);
        assert!(r.probs.iter().all(|p| p.is_finite() && *p >= 0.0));
    }
    assert_eq!(softmax3([3e38, 0.0, -3e38]).probs, [1.0, 0.0, 0.0]);
    assert_eq!(
        softmax3([0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]).probs,
        [1.0, 0.0, 0.0]
    );
    for bad in [
        [f32::NAN, 0.0, 0.0],
        [f32::INFINITY, 0.0, 0.0],
        [f32::NEG_INFINITY; 3],
    ] {
        let r = softmax3(bad);
        assert!(r.fallback, "{bad:?}");
        assert_eq!(r.probs, crate::output::UNIFORM);
    }
}

#[test]
fn log_loss_and_accuracy_match_hand_values() {
    let eps = f64::EPSILON;
    let probs = [
        [0.7, 0.2, 0.1],
        [1.0, 0.0, 0.0],
        [0.2, 0.3, 0.5],
        [0.0, 0.0, 1.0],
    ];
    let labels = [0, 1, 2, 2];
    // Row 2 has p = 0 for its label: clipped to eps. Row 4 has p = 1: clipped to 1 - eps.
    let expected = (-(0.7f64.ln()) - eps.ln() - 0.5f64.ln() - (1.0 - eps).ln()) / 4.0;
    let got = crate::metrics::log_loss(&probs, &labels).unwrap();
    assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    assert!((got - 9.273_368_878).abs() < 1e-6, "{got}");
    assert_eq!(crate::metrics::accuracy(&probs, &labels).unwrap(), 0.75);
    // Uniform predictions score ln 3.
    let uni = vec![crate::output::UNIFORM; 5];
    let ll = crate::metrics::log_loss(&uni, &[0, 1, 2, 0, 1]).unwrap();
    assert!((ll - 3f64.ln()).abs() < 1e-15);
    assert_eq!(crate::metrics::argmax3([0.4, 0.4, 0.2]), 0);
    assert!(crate::metrics::log_loss(&probs, &labels[..3]).is_err());
    assert!(crate::metrics::log_loss(&probs[..1], &[3]).is_err());
    assert!(crate::metrics::log_loss(&[], &[]).is_err());
}
