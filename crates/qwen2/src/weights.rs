//! The safetensors files of a Hugging Face checkpoint directory: one `model.safetensors` or the
//! shards named by `model.safetensors.index.json`, memory-mapped, with typed reads that name the
//! file and tensor at fault.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::awq::{AwqConfig, AwqLayer, PACK_FACTOR};
use crate::error::{ensure, Error, Result};
use crate::linear::Linear;
use crate::source::WeightSource;

/// The safetensors files of a checkpoint, with the file that holds each tensor.
pub(crate) struct Weights {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    index: HashMap<String, usize>,
    /// The checkpoint's AWQ quantization, if any.
    awq: Option<AwqConfig>,
}

impl Weights {
    /// Opens `model.safetensors.index.json` (every shard it names) or else `model.safetensors`.
    pub(crate) fn open(dir: &Path, awq: Option<AwqConfig>) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let paths: Vec<PathBuf> = if index_path.is_file() {
            let text =
                std::fs::read_to_string(&index_path).map_err(Error::io("read", &index_path))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: index_path.clone(),
                    source,
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::malformed(&index_path, "no `weight_map` object"))?;
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            ensure!(
                !names.is_empty(),
                Error::malformed(&index_path, "the index names no weight files")
            );
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(Error::malformed(
                dir,
                "no weights: expected model.safetensors or model.safetensors.index.json",
            ));
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for (i, path) in paths.into_iter().enumerate() {
            ensure!(
                path.is_file(),
                Error::malformed(
                    &path,
                    "this weight file (listed in the shard index) does not exist"
                )
            );
            // SAFETY: the file is mapped read-only and only read while `Weights` lives; as with any
            // memory map, it must not be modified by another process during loading.
            let st =
                unsafe { MmapedSafetensors::new(&path) }.map_err(|source| Error::Safetensors {
                    path: path.clone(),
                    source: Box::new(source),
                })?;
            for (name, _) in st.tensors() {
                index.entry(name).or_insert(i);
            }
            files.push((path, st));
        }
        Ok(Self { files, index, awq })
    }

    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn file_list(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        names.join(", ")
    }

    /// The raw bytes, dtype and shape of `name`, checked against `shape`.
    fn raw(&self, name: &str, shape: &[usize]) -> Result<(&[u8], DType, &Path)> {
        let &i = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            awq: None,
            files: self.file_list(),
        })?;
        let (path, st) = &self.files[i];
        let read_error = |source| Error::TensorRead {
            name: name.to_string(),
            path: path.clone(),
            source: Box::new(source),
        };
        let view = st.get(name).map_err(read_error)?;
        ensure!(
            view.shape() == shape,
            Error::TensorShape {
                name: name.to_string(),
                path: path.clone(),
                found: view.shape().to_vec(),
                expected: shape.to_vec(),
            }
        );
        let dtype = DType::try_from(view.dtype()).map_err(read_error)?;
        Ok((view.data(), dtype, path.as_path()))
    }

    /// Packed 32-bit words (i32 or u32) of the given shape.
    fn words(&self, name: &str, shape: &[usize]) -> Result<Vec<u32>> {
        let (data, dtype, path) = self.raw(name, shape)?;
        ensure!(
            matches!(dtype, DType::I32 | DType::U32),
            Error::TensorDtype {
                name: name.to_string(),
                path: path.to_path_buf(),
                found: dtype,
                expected: "I32 packed words",
            }
        );
        Ok(data
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// A float tensor of the given shape widened to f32 on the host.
    fn floats(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (data, dtype, path) = self.raw(name, shape)?;
        Ok(match dtype {
            DType::F16 => data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::BF16 => data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            DType::F32 => data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            other => {
                return Err(Error::TensorDtype {
                    name: name.to_string(),
                    path: path.to_path_buf(),
                    found: other,
                    expected: "a float dtype",
                })
            }
        })
    }
}

impl WeightSource for Weights {
    /// A float tensor of the given shape, on `device` in `dtype`.
    fn dense(&self, name: &str, shape: &[usize], device: &Device, dtype: DType) -> Result<Tensor> {
        let (data, src_dtype, path) = self.raw(name, shape)?;
        ensure!(
            matches!(src_dtype, DType::F16 | DType::BF16 | DType::F32),
            Error::TensorDtype {
                name: name.to_string(),
                path: path.to_path_buf(),
                found: src_dtype,
                expected: "a float dtype",
            }
        );
        let t =
            Tensor::from_raw_buffer(data, src_dtype, shape, &Device::Cpu).map_err(|source| {
                Error::TensorRead {
                    name: name.to_string(),
                    path: path.to_path_buf(),
                    source: Box::new(source),
                }
            })?;
        Ok(t.to_device(device)?.to_dtype(dtype)?)
    }

    /// Linear layer `prefix` (`[out, in]`): `prefix.weight`, or AWQ
    /// `prefix.qweight/qzeros/scales` dequantized to a dense weight.
    fn linear(
        &self,
        prefix: &str,
        out_f: usize,
        in_f: usize,
        device: &Device,
        dtype: DType,
    ) -> Result<Linear> {
        let dense_name = format!("{prefix}.weight");
        let qweight = format!("{prefix}.qweight");
        if self.has(&dense_name) {
            return Ok(Linear::Dense(self.dense(
                &dense_name,
                &[out_f, in_f],
                device,
                dtype,
            )?));
        }
        if !self.has(&qweight) {
            return Err(Error::MissingTensor {
                name: dense_name,
                awq: Some(qweight),
                files: self.file_list(),
            });
        }
        let awq = self.awq.as_ref().ok_or_else(|| Error::Awq {
            layer: prefix.to_string(),
            reason: format!(
                "tensor `{qweight}` is AWQ-packed but config.json has no quantization_config"
            ),
        })?;
        let group = awq.group_for(in_f);
        ensure!(
            out_f.is_multiple_of(PACK_FACTOR) && group > 0 && in_f.is_multiple_of(group),
            Error::Awq {
                layer: prefix.to_string(),
                reason: format!(
                    "[{out_f}, {in_f}] does not fit AWQ packing with group size {group}"
                ),
            }
        );
        let words = out_f / PACK_FACTOR;
        let groups = in_f / group;
        let layer = AwqLayer {
            qweight: self.words(&qweight, &[in_f, words])?,
            qzeros: self.words(&format!("{prefix}.qzeros"), &[groups, words])?,
            scales: self.floats(&format!("{prefix}.scales"), &[groups, out_f])?,
            in_features: in_f,
            out_features: out_f,
            group,
        };
        let weight = layer
            .to_tensor(device, dtype)
            .map_err(|source| Error::Layer {
                action: "dequantize AWQ layer",
                layer: prefix.to_string(),
                source: Box::new(source),
            })?;
        Ok(Linear::Dense(weight))
    }
}
