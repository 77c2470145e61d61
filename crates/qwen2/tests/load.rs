//! Loading checkpoints: AWQ, dense and sharded give the same logits, and every kind of broken
//! directory fails with a message naming the file or tensor at fault.

use std::path::Path;

use candle_core::{DType, Device};
use qwen2_prefill::synthetic::{write_checkpoint, Preset, WeightFormat};
use qwen2_prefill::{Error, Qwen2};

fn load_cpu(dir: &Path) -> Qwen2 {
    Qwen2::load(dir, &Device::Cpu, DType::F32).unwrap()
}

fn logits_of(model: &Qwen2, rows: &[Vec<u32>]) -> Vec<Vec<f32>> {
    let refs: Vec<&[u32]> = rows.iter().map(|r| r.as_slice()).collect();
    let t = model.last_logits(&refs).unwrap();
    assert_eq!(t.dims(), &[rows.len(), model.config().vocab_size]);
    assert_eq!(t.dtype(), DType::F32);
    t.to_vec2::<f32>().unwrap()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

#[test]
fn dense_and_sharded_checkpoints_load() {
    // The same draw as AWQ and as dense f16: logits agree up to f16 rounding of the weights.
    let awq_dir = tempfile::tempdir().unwrap();
    let dense_dir = tempfile::tempdir().unwrap();
    let sharded_dir = tempfile::tempdir().unwrap();
    let awq_preset = Preset::tiny();
    let dense_preset = Preset {
        format: WeightFormat::Float16 { group_size: 32 },
        ..Preset::tiny()
    };
    let sharded_preset = Preset {
        max_shard_bytes: Some(8 << 20),
        ..dense_preset.clone()
    };
    write_checkpoint(awq_dir.path(), &awq_preset, 2).unwrap();
    write_checkpoint(dense_dir.path(), &dense_preset, 2).unwrap();
    write_checkpoint(sharded_dir.path(), &sharded_preset, 2).unwrap();
    assert!(sharded_dir
        .path()
        .join("model.safetensors.index.json")
        .is_file());
    let shards = std::fs::read_dir(sharded_dir.path())
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name().into_string().unwrap();
            n.starts_with("model-0000") && n.ends_with(".safetensors")
        })
        .count();
    assert!(shards >= 3, "expected several shards, got {shards}");
    let cfg = std::fs::read_to_string(dense_dir.path().join("config.json")).unwrap();
    assert!(!cfg.contains("quantization_config"));

    let rows: Vec<Vec<u32>> = vec![vec![9, 8, 7, 6, 5], vec![151935], (100..140).collect()];
    let a = logits_of(&load_cpu(awq_dir.path()), &rows);
    let d = logits_of(&load_cpu(dense_dir.path()), &rows);
    let s = logits_of(&load_cpu(sharded_dir.path()), &rows);
    let worst = a
        .iter()
        .zip(&d)
        .map(|(x, y)| max_abs_diff(x, y))
        .fold(0f32, f32::max);
    eprintln!("awq vs dense f16: max |diff| = {worst:e}");
    assert!(worst < 0.02, "awq vs dense f16 logits differ by {worst}");
    assert_eq!(
        d, s,
        "sharded and single-file dense checkpoints must agree exactly"
    );
}

fn load_err(dir: &Path) -> String {
    match Qwen2::load(dir, &Device::Cpu, DType::F32) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites model.safetensors without the tensor `drop`.
fn drop_tensor(dir: &Path, drop: &str) {
    let path = dir.join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: Vec<(String, safetensors::tensor::TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != drop)
        .collect();
    assert_eq!(kept.len() + 1, st.len(), "{drop} was not in the file");
    let out = safetensors::serialize(kept, None).unwrap();
    std::fs::write(&path, out).unwrap();
}

#[test]
fn load_errors_are_clear() {
    let empty = tempfile::tempdir().unwrap();
    let e = load_err(empty.path());
    assert!(
        e.contains("config.json") && e.contains(&empty.path().display().to_string()),
        "{e}"
    );

    let base = tempfile::tempdir().unwrap();
    write_checkpoint(base.path(), &Preset::tiny_dense(), 4).unwrap();
    let copy = |name: &str| {
        let d = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(base.path().join(f), d.path().join(f)).unwrap();
        }
        eprintln!("case {name}");
        d
    };

    // No weights.
    let d = copy("no weights");
    std::fs::remove_file(d.path().join("model.safetensors")).unwrap();
    let e = load_err(d.path());
    assert!(
        e.contains("model.safetensors") && e.contains("no weights"),
        "{e}"
    );

    // Not a Qwen2 model.
    let d = copy("llama");
    edit_config(d.path(), |v| {
        v["model_type"] = "llama".into();
        v["architectures"] = serde_json::json!(["LlamaForCausalLM"]);
    });
    let e = load_err(d.path());
    assert!(
        e.contains("llama") && e.contains("config.json") && e.contains("qwen2"),
        "{e}"
    );

    // Missing tensor.
    let d = copy("missing tensor");
    drop_tensor(d.path(), "model.layers.1.mlp.down_proj.weight");
    let e = load_err(d.path());
    assert!(
        e.contains("model.layers.1.mlp.down_proj.weight") && e.contains("not found"),
        "{e}"
    );
    assert!(e.contains("model.safetensors"), "{e}");

    // Shape mismatch.
    let d = copy("shape");
    edit_config(d.path(), |v| v["intermediate_size"] = 128.into());
    let e = load_err(d.path());
    assert!(
        e.contains("shape") && e.contains("[96, 64]") && e.contains("model.safetensors"),
        "{e}"
    );

    // Unsupported quantization.
    let d = copy("gptq");
    edit_config(d.path(), |v| {
        v["quantization_config"] = serde_json::json!({"quant_method": "gptq", "bits": 4});
    });
    let e = load_err(d.path());
    assert!(e.contains("gptq") && e.contains("config.json"), "{e}");

    // Tied lm_head declared untied: lm_head.weight is missing.
    let d = copy("untied");
    edit_config(d.path(), |v| v["tie_word_embeddings"] = false.into());
    let e = load_err(d.path());
    assert!(e.contains("lm_head.weight"), "{e}");

    // Shard index naming a missing file.
    let d = copy("index");
    std::fs::write(
        d.path().join("model.safetensors.index.json"),
        r#"{"weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}"#,
    )
    .unwrap();
    let e = load_err(d.path());
    assert!(e.contains("model-00001-of-00002.safetensors"), "{e}");
}

/// The error for each broken directory is the variant that says who must act, with the file,
/// tensor and shapes as fields and the underlying error kept as its source.
#[test]
fn load_errors_are_typed() {
    fn load(dir: &Path) -> Error {
        match Qwen2::load(dir, &Device::Cpu, DType::F32) {
            Ok(_) => panic!("loading {} should fail", dir.display()),
            Err(e) => e,
        }
    }
    fn is_send_sync_static<T: std::error::Error + Send + Sync + 'static>(_: &T) {}

    let empty = tempfile::tempdir().unwrap();
    let e = load(empty.path());
    is_send_sync_static(&e);
    match &e {
        Error::MissingConfig { path, source } => {
            assert_eq!(path, &empty.path().join("config.json"));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected MissingConfig, got {other:?}"),
    }
    let source = std::error::Error::source(&e).expect("the io error is kept as the source");
    assert!(source.downcast_ref::<std::io::Error>().is_some());

    let base = tempfile::tempdir().unwrap();
    write_checkpoint(base.path(), &Preset::tiny_dense(), 4).unwrap();
    let copy = || {
        let d = tempfile::tempdir().unwrap();
        for f in ["config.json", "model.safetensors"] {
            std::fs::copy(base.path().join(f), d.path().join(f)).unwrap();
        }
        d
    };

    let d = copy();
    std::fs::write(d.path().join("config.json"), "{ not json").unwrap();
    match load(d.path()) {
        Error::Json { path, source } => {
            assert_eq!(path, d.path().join("config.json"));
            assert!(source.is_syntax(), "{source}");
        }
        other => panic!("expected Json, got {other:?}"),
    }

    let d = copy();
    edit_config(d.path(), |v| v["model_type"] = "llama".into());
    match load(d.path()) {
        Error::UnsupportedModel { path, reason } => {
            assert_eq!(path, Some(d.path().join("config.json")));
            assert!(reason.contains("\"llama\""), "{reason}");
        }
        other => panic!("expected UnsupportedModel, got {other:?}"),
    }

    let d = copy();
    drop_tensor(d.path(), "model.norm.weight");
    match load(d.path()) {
        Error::MissingTensor { name, awq, files } => {
            assert_eq!(name, "model.norm.weight");
            assert_eq!(awq, None);
            assert!(files.contains("model.safetensors"), "{files}");
        }
        other => panic!("expected MissingTensor, got {other:?}"),
    }

    let d = copy();
    edit_config(d.path(), |v| v["intermediate_size"] = 128.into());
    match load(d.path()) {
        Error::TensorShape {
            name,
            path,
            found,
            expected,
        } => {
            assert!(name.starts_with("model.layers.0.mlp."), "{name}");
            assert_eq!(path, d.path().join("model.safetensors"));
            assert_ne!(found, expected);
            assert!(expected.contains(&128), "{expected:?}");
        }
        other => panic!("expected TensorShape, got {other:?}"),
    }

    let file = d.path().join("model.safetensors");
    match Qwen2::load(&file, &Device::Cpu, DType::F32) {
        Err(Error::ModelPath { path, reason }) => {
            assert_eq!(path, file);
            assert!(reason.contains("not a GGUF file"), "{reason}");
        }
        Err(other) => panic!("expected ModelPath, got {other:?}"),
        Ok(_) => panic!("a safetensors file is not a model"),
    }
    match Qwen2::load(base.path(), &Device::Cpu, DType::BF16) {
        Err(Error::Unsupported(reason)) => assert!(reason.contains("BF16"), "{reason}"),
        Err(other) => panic!("expected Unsupported, got {other:?}"),
        Ok(_) => panic!("BF16 on the CPU is not supported"),
    }
}
