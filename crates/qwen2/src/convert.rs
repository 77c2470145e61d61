//! Converting a GGUF model to an AutoAWQ GEMM checkpoint (4-bit, zero points, a group size of
//! 128 by default): the AWQ loading path then runs real weights.
//!
//! Every linear layer is dequantized from the GGUF to f32 and re-quantized with
//! [`crate::awq::quantize`] (round-to-nearest on each group's min–max range; AutoAWQ's
//! activation-aware scale search needs calibration data and is not done). Embeddings, norms, biases
//! and an untied lm_head are stored as f16. The result is a Hugging Face directory: `config.json`
//! (with its `quantization_config`) and `model.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::awq::{quantize, AwqConfig, PACK_FACTOR};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, GgufLinears};
use crate::source::WeightSource;

/// Writes an AutoAWQ GEMM checkpoint of the GGUF `gguf` into `out_dir` (created if needed), with
/// quantization groups of `group` inputs. Returns the number of linear layers quantized.
///
/// # Errors
/// The GGUF cannot be read or is not qwen2, a layer does not fit the group size, or the files
/// cannot be written (the message names them).
pub fn gguf_to_awq(gguf: &Path, out_dir: &Path, group: usize) -> Result<usize> {
    let src = Gguf::open(gguf, GgufLinears::Dequantize)?;
    let cfg = src.config()?;
    let cpu = Device::Cpu;
    let (hidden, inter, vocab) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_kv_heads(), cfg.head_dim());
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut dense = |name: &str, shape: &[usize]| -> Result<()> {
        let t = src.dense(name, shape, &cpu, DType::F16)?;
        tensors.insert(name.to_string(), t);
        Ok(())
    };
    dense("model.embed_tokens.weight", &[vocab, hidden])?;
    dense("model.norm.weight", &[hidden])?;
    if !cfg.tie_word_embeddings {
        dense("lm_head.weight", &[vocab, hidden])?;
    }
    let mut linears = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, n) in [
            ("input_layernorm.weight", hidden),
            ("post_attention_layernorm.weight", hidden),
            ("self_attn.q_proj.bias", nh * hd),
            ("self_attn.k_proj.bias", nkv * hd),
            ("self_attn.v_proj.bias", nkv * hd),
        ] {
            dense(&format!("{p}.{name}"), &[n])?;
        }
        for (name, out_f, in_f) in [
            ("self_attn.q_proj", nh * hd, hidden),
            ("self_attn.k_proj", nkv * hd, hidden),
            ("self_attn.v_proj", nkv * hd, hidden),
            ("self_attn.o_proj", hidden, nh * hd),
            ("mlp.gate_proj", inter, hidden),
            ("mlp.up_proj", inter, hidden),
            ("mlp.down_proj", hidden, inter),
        ] {
            linears.push((format!("{p}.{name}"), out_f, in_f));
        }
    }
    for (prefix, out_f, in_f) in &linears {
        let w = src
            .dense(
                &format!("{prefix}.weight"),
                &[*out_f, *in_f],
                &cpu,
                DType::F32,
            )?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let layer = quantize(&w, *out_f, *in_f, group).map_err(|source| Error::Layer {
            action: "quantize",
            layer: prefix.clone(),
            source: Box::new(source),
        })?;
        let words = out_f / PACK_FACTOR;
        let as_i32 = |v: Vec<u32>, shape: (usize, usize)| -> Result<Tensor> {
            let v: Vec<i32> = v.into_iter().map(|w| w as i32).collect();
            Ok(Tensor::from_vec(v, shape, &cpu)?)
        };
        tensors.insert(
            format!("{prefix}.qweight"),
            as_i32(layer.qweight, (*in_f, words))?,
        );
        tensors.insert(
            format!("{prefix}.qzeros"),
            as_i32(layer.qzeros, (in_f / group, words))?,
        );
        tensors.insert(
            format!("{prefix}.scales"),
            Tensor::from_vec(layer.scales, (in_f / group, *out_f), &cpu)?.to_dtype(DType::F16)?,
        );
    }
    std::fs::create_dir_all(out_dir).map_err(Error::io("create", out_dir))?;
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": nh,
        "num_key_value_heads": nkv,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_base(),
        "rope_scaling": null,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "use_sliding_window": false,
        "torch_dtype": "float16",
        "vocab_size": vocab,
        "quantization_config": AwqConfig::new(Some(group)).to_json(),
    });
    let config_path = out_dir.join("config.json");
    let text = serde_json::to_string_pretty(&config).map_err(|source| Error::Json {
        path: config_path.clone(),
        source,
    })?;
    std::fs::write(&config_path, text + "\n").map_err(Error::io("write", &config_path))?;
    let weights = out_dir.join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).map_err(|e| match e {
        candle_core::Error::Io(source) => Error::io("write", &weights)(source),
        e => Error::Candle(e),
    })?;
    Ok(linears.len())
}
