//! AllowedIds (a global logit bias or allow-list): semantics per dtype.

use logits_processors::*;

mod common;
use common::*;

#[test]
fn allowed_ids_boost_and_mask_in_every_dtype() {
    for dtype in DTYPES {
        let c = config(2, 5);
        let mut boost = AllowedIds::new(&c, [3, 0, 3], AllowedMode::Boost(100.0)).unwrap();
        let mut mask = AllowedIds::new(&c, [3, 0], AllowedMode::Mask).unwrap();
        assert_eq!(boost.ids(), &[0, 3]);
        for p in [&mut boost as &mut dyn LogitsProcessor, &mut mask] {
            admit(p, &[None, None]).unwrap();
        }
        let rows: [&[f32]; 2] = [&[1., 2., 3., 4., 5.], &[NEG, 2., f32::NAN, 4., 5.]];
        let t = logits(&rows, dtype);
        boost.apply(&t).unwrap();
        let want = vec![
            vec![101., 2., 3., 104., 5.],
            vec![NEG, 2., f32::NAN, 104., 5.],
        ];
        assert!(same(&read(&t), &want), "{dtype:?}: {:?}", read(&t));
        let t = logits(&rows, dtype);
        mask.apply(&t).unwrap();
        let want = vec![vec![1., NEG, NEG, 4., NEG], vec![NEG, NEG, NEG, 4., NEG]];
        assert!(same(&read(&t), &want), "{dtype:?}: {:?}", read(&t));
    }
}
