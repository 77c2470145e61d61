//! AWQ GEMM 4-bit: unpacking against AutoAWQ's own output (fixture), pack/unpack round trips,
//! threaded dequantization and `quantization_config` parsing.
//!
//! Fixture (never skipped; a missing one fails with the command that makes it):
//! `tests/fixtures/awq_reference.safetensors` from `python3 crates/qwen2/scripts/awq_reference.py` (numpy).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use qwen2_prefill::awq;
use rand::{Rng, SeedableRng};

/// The crate root: `CARGO_MANIFEST_DIR` at run time (cargo sets it; set it by hand when running a
/// test binary built elsewhere), else the one this file was compiled in.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn fixture(name: &str, how: &str) -> PathBuf {
    let p = manifest_dir().join("tests/fixtures").join(name);
    assert!(
        p.is_file(),
        "missing fixture {}: make it with {how}",
        p.display()
    );
    p
}

fn tensor_u32(map: &HashMap<String, Tensor>, name: &str) -> Vec<u32> {
    let t = map
        .get(name)
        .unwrap_or_else(|| panic!("fixture lacks {name}"));
    t.flatten_all()
        .unwrap()
        .to_vec1::<i32>()
        .unwrap()
        .into_iter()
        .map(|x| x as u32)
        .collect()
}

fn tensor_f32(map: &HashMap<String, Tensor>, name: &str) -> Vec<f32> {
    let t = map
        .get(name)
        .unwrap_or_else(|| panic!("fixture lacks {name}"));
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

#[test]
fn awq_matches_autoawq_reference() {
    let path = fixture(
        "awq_reference.safetensors",
        "`python3 crates/qwen2/scripts/awq_reference.py` (needs numpy)",
    );
    let map = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let dims = map["qweight"].dims().to_vec();
    let in_f = dims[0];
    let out_f = dims[1] * awq::PACK_FACTOR;
    let group = tensor_u32(&map, "group_size")[0] as usize;
    let qweight = tensor_u32(&map, "qweight");
    let qzeros = tensor_u32(&map, "qzeros");
    let intweight: Vec<u8> = tensor_u32(&map, "intweight")
        .iter()
        .map(|&x| x as u8)
        .collect();
    let izeros: Vec<u8> = tensor_u32(&map, "izeros")
        .iter()
        .map(|&x| x as u8)
        .collect();

    assert_eq!(awq::unpack(&qweight), intweight, "qweight nibble order");
    assert_eq!(awq::unpack(&qzeros), izeros, "qzeros nibble order");
    assert_eq!(
        awq::pack(&intweight).unwrap(),
        qweight,
        "pack follows AWQ_ORDER"
    );
    assert_eq!(awq::pack(&izeros).unwrap(), qzeros);

    let layer = awq::AwqLayer {
        qweight,
        qzeros,
        scales: tensor_f32(&map, "scales"),
        in_features: in_f,
        out_features: out_f,
        group,
    };
    let dense = layer.dequantize().unwrap();
    let want = tensor_f32(&map, "weight_f32");
    assert_eq!(
        dense, want,
        "dequantized weights must equal the reference exactly"
    );
    let want_f16 = tensor_f32(&map, "weight_f16");
    let ours_f16: Vec<f32> = dense
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();
    assert_eq!(
        ours_f16, want_f16,
        "rounded to f16 equals AutoAWQ's f16 dequant"
    );

    // The tensor form is the [out, in] transpose.
    let t = layer.to_tensor(&Device::Cpu, DType::F32).unwrap();
    assert_eq!(t.dims(), &[out_f, in_f]);
    let t_back = t
        .t()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(t_back, want);
}

#[test]
fn awq_pack_unpack_round_trip() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for &(rows, cols) in &[(1usize, 8usize), (3, 16), (17, 64), (64, 256)] {
        let values: Vec<u8> = (0..rows * cols)
            .map(|_| rng.random_range(0..16u8))
            .collect();
        let packed = awq::pack(&values).unwrap();
        assert_eq!(packed.len(), rows * cols / 8);
        assert_eq!(awq::unpack(&packed), values);
        let words: Vec<u32> = (0..rows * cols / 8).map(|_| rng.random::<u32>()).collect();
        assert_eq!(awq::pack(&awq::unpack(&words)).unwrap(), words);
    }
    // Column j of a word sits in nibble AWQ_REVERSE_ORDER[j]: column 1 is bits 16..20.
    assert_eq!(awq::unpack_word(0x0001_0000), [0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(awq::unpack_word(0x0000_0010), [0, 0, 1, 0, 0, 0, 0, 0]);
    assert!(awq::pack(&[16, 0, 0, 0, 0, 0, 0, 0]).is_err());
    assert!(awq::pack(&[1, 2, 3]).is_err());
}

#[test]
fn awq_dequantize_large_layer_is_threaded_consistently() {
    // Big enough to take the multi-threaded path; compare against a scalar evaluation.
    let (in_f, out_f, group) = (512usize, 1024usize, 128usize);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let qweight: Vec<u32> = (0..in_f * out_f / 8).map(|_| rng.random()).collect();
    let qzeros: Vec<u32> = (0..in_f / group * out_f / 8)
        .map(|_| rng.random())
        .collect();
    let scales: Vec<f32> = (0..in_f / group * out_f)
        .map(|_| half::f16::from_f32(rng.random_range(0.001f32..0.01)).to_f32())
        .collect();
    let layer = awq::AwqLayer {
        qweight: qweight.clone(),
        qzeros: qzeros.clone(),
        scales: scales.clone(),
        in_features: in_f,
        out_features: out_f,
        group,
    };
    let dense = layer.dequantize().unwrap();
    let q = awq::unpack(&qweight);
    let z = awq::unpack(&qzeros);
    for i in (0..in_f).step_by(37) {
        for o in 0..out_f {
            let g = i / group;
            let want = (q[i * out_f + o] as f32 - z[g * out_f + o] as f32) * scales[g * out_f + o];
            assert_eq!(dense[i * out_f + o], want, "at [{i}, {o}]");
        }
    }
}

#[test]
fn awq_config_parsing() {
    let ok = serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": 128,
        "zero_point": true, "version": "GEMM", "modules_to_not_convert": null});
    assert_eq!(
        awq::AwqConfig::from_json(&ok).unwrap(),
        awq::AwqConfig::new(Some(128))
    );
    let per_channel = serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": -1,
        "zero_point": true, "version": "gemm"});
    let c = awq::AwqConfig::from_json(&per_channel).unwrap();
    assert_eq!(c.group_for(2048), 2048);
    assert_eq!(awq::AwqConfig::from_json(&c.to_json()).unwrap(), c);

    let err = |v: serde_json::Value| format!("{:#}", awq::AwqConfig::from_json(&v).unwrap_err());
    let gemv = err(
        serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": 128,
        "zero_point": true, "version": "gemv"}),
    );
    assert!(gemv.contains("gemv") && gemv.contains("GEMM"), "{gemv}");
    let bits = err(
        serde_json::json!({"quant_method": "awq", "bits": 8, "group_size": 128,
        "zero_point": true, "version": "gemm"}),
    );
    assert!(bits.contains("8 bits"), "{bits}");
    let gptq = err(serde_json::json!({"quant_method": "gptq", "bits": 4, "group_size": 128}));
    assert!(gptq.contains("gptq"), "{gptq}");
    let zp = err(
        serde_json::json!({"quant_method": "awq", "bits": 4, "group_size": 128,
        "zero_point": false, "version": "gemm"}),
    );
    assert!(zp.contains("zero_point"), "{zp}");
}
