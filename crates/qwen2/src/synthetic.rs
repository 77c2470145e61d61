//! Deterministic random Qwen2 checkpoints in the Hugging Face layout, for tests and demos where no
//! real weights can be downloaded.
//!
//! [`write_checkpoint`] writes `config.json`, `generation_config.json` and `model.safetensors` (or
//! shards plus `model.safetensors.index.json`) into a directory. Linear layers are AWQ GEMM 4-bit
//! (`qweight`/`qzeros`/`scales`, packed in AutoAWQ's nibble order by [`crate::awq::pack`]) or, for
//! [`WeightFormat::Float16`], the same weights dequantized and stored as dense f16 `[out, in]`.
//! Embeddings, norms and biases are f16.
//!
//! Every tensor is drawn from its own SplitMix64 stream seeded from the seed and the tensor's name,
//! using only integer arithmetic and exactly rounded float operations, so the bytes are the same
//! on every machine and do not depend on the order tensors are written in.
//!
//! Scales keep activations sane: each linear layer's weights have a standard deviation of about
//! `gain / sqrt(in_features)`, norms are `1 ± 0.2`, biases `± 0.1·√3`-uniform, and embeddings (and
//! an untied lm_head) about `2 / sqrt(hidden)`, which gives logits with a spread of a few units.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use half::f16;

use crate::awq::{self, AwqConfig, AwqLayer, PACK_FACTOR};
use crate::error::{ensure, Error, Result};

/// How the linear layers of a generated checkpoint are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// AWQ GEMM 4-bit with the given group size (`quantization_config` in config.json).
    Awq {
        /// Input rows per quantization group.
        group_size: usize,
    },
    /// Dense f16 `[out, in]` weights: the AWQ weights drawn with `group_size` dequantized and
    /// rounded to f16 (no `quantization_config`).
    Float16 {
        /// Group size of the AWQ draw the dense weights come from.
        group_size: usize,
    },
}

/// The architecture and storage of a generated checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    /// Preset name (informational).
    pub name: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads.
    pub num_key_value_heads: usize,
    /// Longest sequence.
    pub max_position_embeddings: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Whether the lm_head is the embedding matrix (no `lm_head.weight` is written).
    pub tie_word_embeddings: bool,
    /// Storage of the linear layers.
    pub format: WeightFormat,
    /// When set, weights are split into shards of at most about this many bytes with a
    /// `model.safetensors.index.json`; otherwise one `model.safetensors`.
    pub max_shard_bytes: Option<u64>,
}

impl Preset {
    /// Names accepted by [`Preset::by_name`].
    pub const NAMES: [&'static str; 3] = ["tiny", "tiny-dense", "qwen2.5-3b"];

    /// Tiny AWQ model for tests and demos: Qwen's real vocabulary size (151936, so the real
    /// tokenizer's ids work), hidden 64, 2 layers, 4 heads, 2 KV heads, intermediate 128, group
    /// size 32, untied lm_head.
    pub fn tiny() -> Self {
        Self {
            name: "tiny".into(),
            vocab_size: 151936,
            hidden_size: 64,
            intermediate_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            max_position_embeddings: 32768,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: false,
            format: WeightFormat::Awq { group_size: 32 },
            max_shard_bytes: None,
        }
    }

    /// Tiny dense f16 model with tied embeddings and plain multi-head attention (8 heads of 8,
    /// 3 layers, vocabulary 4096, RoPE base 10000): covers the non-AWQ and tied-lm_head paths.
    pub fn tiny_dense() -> Self {
        Self {
            name: "tiny-dense".into(),
            vocab_size: 4096,
            hidden_size: 64,
            intermediate_size: 96,
            num_hidden_layers: 3,
            num_attention_heads: 8,
            num_key_value_heads: 8,
            max_position_embeddings: 4096,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            format: WeightFormat::Float16 { group_size: 32 },
            max_shard_bytes: None,
        }
    }

    /// The shapes of Qwen2.5-3B-Instruct-AWQ: 36 layers, hidden 2048, intermediate 11008, 16
    /// heads, 2 KV heads, vocabulary 151936, group size 128, tied embeddings (about 2.1 GB).
    pub fn qwen25_3b() -> Self {
        Self {
            name: "qwen2.5-3b".into(),
            vocab_size: 151936,
            hidden_size: 2048,
            intermediate_size: 11008,
            num_hidden_layers: 36,
            num_attention_heads: 16,
            num_key_value_heads: 2,
            max_position_embeddings: 32768,
            rope_theta: 1_000_000.0,
            rms_norm_eps: 1e-6,
            tie_word_embeddings: true,
            format: WeightFormat::Awq { group_size: 128 },
            max_shard_bytes: None,
        }
    }

    /// The preset called `name` (one of [`Preset::NAMES`]).
    pub fn by_name(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "tiny-dense" => Ok(Self::tiny_dense()),
            "qwen2.5-3b" | "qwen2.5-3b-awq" => Ok(Self::qwen25_3b()),
            other => Err(Error::InvalidInput(format!(
                "unknown checkpoint preset {other:?} (known: {})",
                Self::NAMES.join(", ")
            ))),
        }
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn group_size(&self) -> usize {
        match self.format {
            WeightFormat::Awq { group_size } | WeightFormat::Float16 { group_size } => group_size,
        }
    }

    fn validate(&self) -> Result<()> {
        let (h, nh, nkv) = (
            self.hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
        );
        ensure!(
            nh > 0 && h % nh == 0 && nkv > 0 && nh % nkv == 0,
            Error::InvalidInput(format!(
                "preset {}: hidden {h}, heads {nh}, kv heads {nkv} are inconsistent",
                self.name
            ))
        );
        ensure!(
            self.head_dim().is_multiple_of(2),
            Error::InvalidInput(format!("preset {}: odd head_dim", self.name))
        );
        let g = self.group_size();
        for (out_f, in_f) in self.linear_shapes() {
            ensure!(
                out_f % PACK_FACTOR == 0 && g > 0 && in_f % g == 0,
                Error::InvalidInput(format!(
                    "preset {}: a [{out_f}, {in_f}] layer does not fit AWQ packing with group {g}",
                    self.name
                ))
            );
        }
        Ok(())
    }

    /// `[out, in]` of the q, k, v, o, gate, up and down projections.
    fn linear_shapes(&self) -> [(usize, usize); 7] {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let (q, kv) = (
            self.num_attention_heads * self.head_dim(),
            self.num_key_value_heads * self.head_dim(),
        );
        [(q, h), (kv, h), (kv, h), (h, q), (i, h), (i, h), (h, i)]
    }

    /// The `config.json` contents, shaped like the real Qwen2.5 AWQ configs.
    pub fn config_json(&self) -> serde_json::Value {
        let mut cfg = serde_json::json!({
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "model_type": "qwen2",
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": null,
            "rope_theta": self.rope_theta,
            "sliding_window": null,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "float16",
            "use_cache": true,
            "use_sliding_window": false,
            "vocab_size": self.vocab_size,
        });
        let obj = cfg.as_object_mut().expect("object");
        if let Some((bos, eos)) = self.special_ids() {
            obj.insert("bos_token_id".into(), bos.into());
            obj.insert("eos_token_id".into(), eos.into());
        }
        if let WeightFormat::Awq { group_size } = self.format {
            obj.insert(
                "quantization_config".into(),
                AwqConfig::new(Some(group_size)).to_json(),
            );
        }
        cfg
    }

    /// Qwen's `<|endoftext|>` and `<|im_end|>` ids when the vocabulary holds them.
    fn special_ids(&self) -> Option<(u64, u64)> {
        (self.vocab_size > 151645).then_some((151643, 151645))
    }
}

/// Tensor element types written by the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dtype {
    I32,
    F16,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::I32 => "I32",
            Dtype::F16 => "F16",
        }
    }
    fn size(self) -> usize {
        match self {
            Dtype::I32 => 4,
            Dtype::F16 => 2,
        }
    }
}

/// How a tensor's values are drawn.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Uniform with the given standard deviation (f16).
    Uniform { std: f32 },
    /// `1 + uniform(±0.2)` (f16 norm weights).
    Norm,
    /// AWQ packed weights of a layer (`qweight`).
    QWeight,
    /// AWQ packed zero points (`qzeros`).
    QZeros,
    /// AWQ scales for a layer whose weights should have standard deviation `std` (f16).
    Scales { std: f32 },
    /// Dense f16 `[out, in]` weight: the AWQ draw of the same layer dequantized.
    DenseFromAwq { std: f32 },
}

/// One tensor of the checkpoint.
#[derive(Debug, Clone)]
struct Spec {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    kind: Kind,
    /// `(out, in)` of the linear layer, for AWQ-derived kinds.
    linear: Option<(usize, usize)>,
}

impl Spec {
    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

/// SplitMix64: a tiny, portable, deterministic generator (Steele, Lea and Flood, 2014).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[-1, 1)` with 24 random bits (exact in f32).
    fn symmetric(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32) * (2.0 / 16_777_216.0) - 1.0
    }

    /// Uniform integer in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() >> 32) * n) >> 32
    }
}

/// The stream for one tensor: FNV-1a of its name mixed with the seed.
fn stream(seed: u64, name: &str) -> SplitMix64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    let mut mix = SplitMix64(seed ^ h);
    SplitMix64(mix.next_u64())
}

/// Standard deviation of `q - z` for q uniform in 0..=15 and z uniform in 5..=10.
const QZ_STD: f32 = 4.92;

fn f16_bytes(values: impl Iterator<Item = f32>, out: &mut Vec<u8>) {
    for v in values {
        out.extend_from_slice(&f16::from_f32(v).to_le_bytes());
    }
}

/// Draws the AWQ parts of linear layer `prefix` ([out, in]) whose weights have about `std`.
fn awq_layer(
    seed: u64,
    prefix: &str,
    out_f: usize,
    in_f: usize,
    group: usize,
    std: f32,
) -> AwqLayer {
    let words = out_f / PACK_FACTOR;
    let groups = in_f / group;
    AwqLayer {
        qweight: qweight_words(seed, &format!("{prefix}.qweight"), in_f * words),
        qzeros: qzero_words(seed, &format!("{prefix}.qzeros"), groups * out_f),
        scales: scale_values(seed, &format!("{prefix}.scales"), groups * out_f, std),
        in_features: in_f,
        out_features: out_f,
        group,
    }
}

/// Random words: every nibble uniform in 0..=15 (the nibble order does not matter for a uniform
/// draw).
fn qweight_words(seed: u64, name: &str, n: usize) -> Vec<u32> {
    let mut rng = stream(seed, name);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = rng.next_u64();
        out.push(r as u32);
        if out.len() < n {
            out.push((r >> 32) as u32);
        }
    }
    out
}

/// Zero points uniform in 5..=10, packed in AWQ order (`n` values, a multiple of 8).
fn qzero_words(seed: u64, name: &str, n: usize) -> Vec<u32> {
    let mut rng = stream(seed, name);
    let values: Vec<u8> = (0..n).map(|_| 5 + rng.below(6) as u8).collect();
    awq::pack(&values).expect("zero points fit in 4 bits and n is a multiple of 8")
}

/// f16-exact scales around `std / QZ_STD`, times a factor uniform in `[0.75, 1.25)`.
fn scale_values(seed: u64, name: &str, n: usize, std: f32) -> Vec<f32> {
    let mut rng = stream(seed, name);
    let base = std / QZ_STD;
    (0..n)
        .map(|_| f16::from_f32(base * (1.0 + 0.25 * rng.symmetric())).to_f32())
        .collect()
}

/// The bytes of one tensor (little-endian).
fn tensor_bytes(spec: &Spec, seed: u64, group: usize) -> Vec<u8> {
    let n: usize = spec.shape.iter().product();
    let mut out = Vec::with_capacity(spec.bytes());
    match spec.kind {
        Kind::Uniform { std } => {
            let mut rng = stream(seed, &spec.name);
            let a = std * 3f32.sqrt();
            f16_bytes((0..n).map(|_| a * rng.symmetric()), &mut out);
        }
        Kind::Norm => {
            let mut rng = stream(seed, &spec.name);
            f16_bytes((0..n).map(|_| 1.0 + 0.2 * rng.symmetric()), &mut out);
        }
        Kind::QWeight => {
            for w in qweight_words(seed, &spec.name, n) {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        Kind::QZeros => {
            for w in qzero_words(seed, &spec.name, n * PACK_FACTOR) {
                out.extend_from_slice(&w.to_le_bytes());
            }
        }
        Kind::Scales { std } => {
            f16_bytes(scale_values(seed, &spec.name, n, std).into_iter(), &mut out);
        }
        Kind::DenseFromAwq { std } => {
            let (out_f, in_f) = spec.linear.expect("linear shape");
            let prefix = spec.name.trim_end_matches(".weight");
            let layer = awq_layer(seed, prefix, out_f, in_f, group, std);
            let dense = layer.dequantize().expect("generated layer is consistent");
            // dense is [in, out]; the checkpoint stores [out, in].
            f16_bytes(
                (0..out_f)
                    .flat_map(|o| (0..in_f).map(move |i| (o, i)))
                    .map(|(o, i)| dense[i * out_f + o]),
                &mut out,
            );
        }
    }
    debug_assert_eq!(out.len(), spec.bytes());
    out
}

/// Every tensor of the checkpoint, in Hugging Face names.
fn specs(p: &Preset) -> Vec<Spec> {
    let (h, v) = (p.hidden_size, p.vocab_size);
    let embed_std = 2.0 / (h as f32).sqrt();
    let mut specs = vec![Spec {
        name: "model.embed_tokens.weight".into(),
        dtype: Dtype::F16,
        shape: vec![v, h],
        kind: Kind::Uniform { std: embed_std },
        linear: None,
    }];
    let names = [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ];
    // Residual-branch outputs (o, down) get a smaller gain so the stream grows slowly.
    let gains = [1.0f32, 1.0, 1.0, 0.5, 1.0, 1.0, 0.5];
    let g = p.group_size();
    let hd = p.head_dim();
    for l in 0..p.num_hidden_layers {
        let pre = format!("model.layers.{l}");
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            specs.push(Spec {
                name: format!("{pre}.{norm}.weight"),
                dtype: Dtype::F16,
                shape: vec![h],
                kind: Kind::Norm,
                linear: None,
            });
        }
        for (proj, heads) in [
            ("q_proj", p.num_attention_heads),
            ("k_proj", p.num_key_value_heads),
            ("v_proj", p.num_key_value_heads),
        ] {
            specs.push(Spec {
                name: format!("{pre}.self_attn.{proj}.bias"),
                dtype: Dtype::F16,
                shape: vec![heads * hd],
                kind: Kind::Uniform { std: 0.1 },
                linear: None,
            });
        }
        for ((name, (out_f, in_f)), gain) in names.iter().zip(p.linear_shapes()).zip(gains) {
            let prefix = format!("{pre}.{name}");
            let std = gain / (in_f as f32).sqrt();
            match p.format {
                WeightFormat::Awq { .. } => {
                    let words = out_f / PACK_FACTOR;
                    let groups = in_f / g;
                    specs.push(Spec {
                        name: format!("{prefix}.qweight"),
                        dtype: Dtype::I32,
                        shape: vec![in_f, words],
                        kind: Kind::QWeight,
                        linear: Some((out_f, in_f)),
                    });
                    specs.push(Spec {
                        name: format!("{prefix}.qzeros"),
                        dtype: Dtype::I32,
                        shape: vec![groups, words],
                        kind: Kind::QZeros,
                        linear: Some((out_f, in_f)),
                    });
                    specs.push(Spec {
                        name: format!("{prefix}.scales"),
                        dtype: Dtype::F16,
                        shape: vec![groups, out_f],
                        kind: Kind::Scales { std },
                        linear: Some((out_f, in_f)),
                    });
                }
                WeightFormat::Float16 { .. } => specs.push(Spec {
                    name: format!("{prefix}.weight"),
                    dtype: Dtype::F16,
                    shape: vec![out_f, in_f],
                    kind: Kind::DenseFromAwq { std },
                    linear: Some((out_f, in_f)),
                }),
            }
        }
    }
    specs.push(Spec {
        name: "model.norm.weight".into(),
        dtype: Dtype::F16,
        shape: vec![h],
        kind: Kind::Norm,
        linear: None,
    });
    if !p.tie_word_embeddings {
        specs.push(Spec {
            name: "lm_head.weight".into(),
            dtype: Dtype::F16,
            shape: vec![v, h],
            kind: Kind::Uniform { std: embed_std },
            linear: None,
        });
    }
    specs
}

/// Writes one safetensors file holding `specs`, streaming tensor by tensor. 4-byte tensors come
/// first so every tensor is aligned to its element size; the header is padded to 8 bytes.
fn write_safetensors(path: &Path, specs: &[&Spec], seed: u64, group: usize) -> Result<u64> {
    let mut ordered: Vec<&Spec> = specs.to_vec();
    ordered.sort_by_key(|s| std::cmp::Reverse(s.dtype.size()));
    // BTreeMaps, not `serde_json::Map`: the keys stay sorted, so the file's bytes (which the
    // golden fixture checksums) do not depend on serde_json's `preserve_order` feature, which
    // a dependency of the workspace's examples (llguidance) turns on.
    let mut header: BTreeMap<String, BTreeMap<&str, serde_json::Value>> = BTreeMap::new();
    header.insert(
        "__metadata__".into(),
        BTreeMap::from([("format", serde_json::json!("pt"))]),
    );
    let mut offset = 0usize;
    for s in &ordered {
        let end = offset + s.bytes();
        header.insert(
            s.name.clone(),
            BTreeMap::from([
                ("dtype", serde_json::json!(s.dtype.name())),
                ("shape", serde_json::json!(s.shape)),
                ("data_offsets", serde_json::json!([offset, end])),
            ]),
        );
        offset = end;
    }
    let mut header = serde_json::to_string(&header)
        .map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?
        .into_bytes();
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let file = std::fs::File::create(path).map_err(Error::io("create", path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let write_error = Error::io("write", path);
    let written = (|| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        for s in &ordered {
            w.write_all(&tensor_bytes(s, seed, group))?;
        }
        w.flush()
    })();
    written.map_err(write_error)?;
    Ok(offset as u64)
}

/// Writes a random Qwen2 checkpoint for `preset` into `dir` (created if needed): `config.json`,
/// `generation_config.json` and the weights. The same preset and seed give the same bytes on
/// every machine.
pub fn write_checkpoint(dir: &Path, preset: &Preset, seed: u64) -> Result<()> {
    preset.validate()?;
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    let write_json = |name: &str, value: &serde_json::Value| -> Result<()> {
        let path = dir.join(name);
        let mut text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        text.push('\n');
        std::fs::write(&path, text).map_err(Error::io("write", path))
    };
    write_json("config.json", &preset.config_json())?;
    let mut gen = serde_json::json!({ "do_sample": false });
    if let Some((bos, eos)) = preset.special_ids() {
        gen["bos_token_id"] = bos.into();
        gen["eos_token_id"] = serde_json::json!([eos, bos]);
    }
    write_json("generation_config.json", &gen)?;

    let specs = specs(preset);
    let group = preset.group_size();
    match preset.max_shard_bytes {
        None => {
            write_safetensors(
                &dir.join("model.safetensors"),
                &specs.iter().collect::<Vec<_>>(),
                seed,
                group,
            )?;
        }
        Some(limit) => {
            let mut shards: Vec<Vec<&Spec>> = vec![Vec::new()];
            let mut size = 0u64;
            for s in &specs {
                let b = s.bytes() as u64;
                if size > 0 && size + b > limit {
                    shards.push(Vec::new());
                    size = 0;
                }
                shards.last_mut().expect("one shard").push(s);
                size += b;
            }
            let n = shards.len();
            let mut weight_map = serde_json::Map::new();
            let mut total = 0u64;
            for (i, shard) in shards.iter().enumerate() {
                let file = format!("model-{:05}-of-{:05}.safetensors", i + 1, n);
                total += write_safetensors(&dir.join(&file), shard, seed, group)?;
                for s in shard {
                    weight_map.insert(s.name.clone(), file.clone().into());
                }
            }
            write_json(
                "model.safetensors.index.json",
                &serde_json::json!({
                    "metadata": { "total_size": total },
                    "weight_map": weight_map,
                }),
            )?;
        }
    }
    Ok(())
}
