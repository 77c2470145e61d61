//! The checkpoint generator: the same preset and seed give the same bytes, another seed other
//! bytes, and the config it writes is one this crate loads.

use qwen2_prefill::synthetic::{write_checkpoint, Preset};

#[test]
fn generator_is_deterministic() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let preset = Preset::tiny();
    write_checkpoint(a.path(), &preset, 42).unwrap();
    write_checkpoint(b.path(), &preset, 42).unwrap();
    for name in ["config.json", "generation_config.json", "model.safetensors"] {
        let x = std::fs::read(a.path().join(name)).unwrap();
        let y = std::fs::read(b.path().join(name)).unwrap();
        assert!(
            x == y,
            "{name} differs between two writes with the same seed"
        );
    }
    // Another seed gives other weights.
    let c = tempfile::tempdir().unwrap();
    write_checkpoint(c.path(), &preset, 43).unwrap();
    assert!(
        std::fs::read(a.path().join("model.safetensors")).unwrap()
            != std::fs::read(c.path().join("model.safetensors")).unwrap(),
        "another seed wrote the same weights"
    );

    // Real HF layout: the config parses as Qwen2 AWQ.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["model_type"], "qwen2");
    assert_eq!(cfg["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(cfg["quantization_config"]["quant_method"], "awq");
    assert_eq!(cfg["quantization_config"]["version"], "gemm");
    assert_eq!(cfg["torch_dtype"], "float16");
    assert!(Preset::by_name("qwen2.5-3b").unwrap().tie_word_embeddings);
    assert!(Preset::by_name("nope").is_err());
}
