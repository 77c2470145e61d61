//! arena_judge: judges LMSYS Chatbot Arena rows zero-shot with a Qwen2.5-*-Instruct model (AWQ
//! checkpoint or GGUF) and writes a Kaggle submission
//! (`id,winner_model_a,winner_model_b,winner_tie`).
//!
//! ```text
//! bash scripts/setup.sh                                  # tokenizer + Qwen2.5-Coder-0.5B GGUF, once
//! cargo run --release --example arena_judge              # demo: 0.5B model, 12 real rows, CPU
//! cargo run --release --example arena_judge --features cuda,qwen2-prefill/cuda -- \
//!     --model Qwen2.5-3B-Instruct-AWQ --data test.csv    # a real checkpoint, on the GPU
//! ```
//!
//! Each row becomes one request whose next token is forced to `A`, `B` or `tie` by the
//! library's [`ForceToken`]; the probabilities of those three tokens are the prediction. The
//! loop in [`run`] is what any Rust engine does with the library: one [`ProcessorConfig`] and
//! one processor for the whole run; per batch, a [`BatchUpdateBuilder`] reports which requests
//! left and joined the persistent batch, then `update_state`, the forward pass, and `apply` on
//! the logits in place. Batching is [`plan`], resuming [`checkpoint`], reporting [`report`].

mod calibration;
mod checkpoint;
mod data;
mod dump;
mod files;
mod inputs;
mod metrics;
mod output;
mod plan;
mod prompt;
mod report;
mod setup;
#[cfg(test)]
mod tests;
mod tokenizer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, D};
use clap::{Parser, ValueEnum};
use logits_processors::{
    BatchUpdateBuilder, ForceToken, LogitsProcessor, ProcessorConfig, RequestParams,
};

use qwen2_prefill::Qwen2;

use crate::metrics::softmax3;
use crate::output::Prediction;
use crate::prompt::{Layout, PromptEncoder, DEFAULT_MAX_MODEL_LEN};

/// Labelled rows the demo judges (a CPU judges about 100 tokens/s with the 0.5B model).
const DEMO_ROWS: usize = 12;
/// The demo's context length.
const DEMO_MAX_MODEL_LEN: usize = 1024;
use crate::report::Summary;

/// Judge LMSYS Chatbot Arena rows zero-shot with a Qwen2.5 model and write a Kaggle submission.
/// Without --model and --data: a demo with Qwen2.5-Coder-0.5B-Instruct (fetched by
/// scripts/setup.sh) on the first 12 bundled labelled rows, prompts cut to 1024 tokens.
#[derive(Parser, Debug)]
#[command(name = "arena_judge")]
struct Cli {
    /// A Qwen2 GGUF file, or a Hugging Face Qwen2 checkpoint directory (config.json,
    /// model.safetensors[.index.json], tokenizer.json) [default: the demo's
    /// Qwen2.5-Coder-0.5B-Instruct GGUF]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// tokenizer.json to use instead of the model's (DIR/tokenizer.json; for a GGUF, the
    /// tokenizer.json beside it or scripts/setup.sh's Qwen2.5 one, checked against its vocabulary)
    #[arg(long, value_name = "PATH")]
    tokenizer: Option<PathBuf>,
    /// Arena CSV, train or test layout [default: the bundled train_first100.csv]
    #[arg(long, value_name = "PATH")]
    data: Option<PathBuf>,
    /// Submission to write (its checkpoint is PATH.partial)
    #[arg(long, value_name = "PATH", default_value = "submission.csv")]
    out: PathBuf,
    /// Judge only the first N labelled rows (N = 128 when omitted) and score them [demo: 12]
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "128")]
    validate: Option<usize>,
    /// Context length: longer prompts are truncated to fit, answer token included
    /// [default: 8192; demo: 1024]
    #[arg(long, value_name = "TOKENS")]
    max_model_len: Option<usize>,
    /// Prompt layout
    #[arg(long, value_enum, default_value_t = LayoutArg::Chat)]
    layout: LayoutArg,
    /// Tokens per batch: real tokens on the fused CUDA path (rows packed, no padding), rows ×
    /// longest row on the padded candle path (CPU, f32), where larger is not faster
    /// (docs/arena_judge.md) [default: 16384 on CUDA, 2048 on the CPU]
    #[arg(long, value_name = "TOKENS")]
    token_budget: Option<usize>,
    /// Most rows per batch (the processors' capacity)
    #[arg(long, value_name = "ROWS", default_value_t = 64)]
    max_batch_rows: usize,
    /// Continue an interrupted run from its checkpoint
    #[arg(long)]
    resume: bool,
    /// Compute dtype: f16, bf16 or f32 [default: f16 on CUDA, f32 on CPU]
    #[arg(long, value_parser = setup::parse_dtype)]
    dtype: Option<DType>,
    /// Run on the CPU even when CUDA is available
    #[arg(long)]
    cpu: bool,
    /// Also write what the model sees to FILE, one JSON line per judged prompt: id, swapped,
    /// batch, position, tokens, truncated, prompt (decoded ids), token_ids
    #[arg(long, value_name = "FILE")]
    dump_prompts: Option<PathBuf>,
    /// Judge every row in both orders (responses A and B exchanged) and average, the swapped
    /// order's A and B exchanged back (twice the work)
    #[arg(long)]
    swap: bool,
    /// Fit a calibration (temperature + class bias, optionally a length feature) on the labelled
    /// rows, report its 5-fold cross-validated log loss, and write it to OUT.json
    #[arg(long, value_name = "OUT.json")]
    calibrate: Option<PathBuf>,
    /// Apply a calibration written by --calibrate to the probabilities
    #[arg(long, value_name = "FILE")]
    calibration: Option<PathBuf>,
}

/// Runs the per-batch ops once, on a scratch processor and a one-row batch of zero logits, so that
/// their first-use costs (the mask kernel's compilation, the driver's JIT of candle's modules:
/// seconds on a fresh GPU machine) are not in the timed loop; the run's own processor sees only
/// real requests.
fn warm_up_judging(
    config: &ProcessorConfig,
    params: &Arc<RequestParams>,
    choices: &Tensor,
) -> Result<()> {
    let mut scratch = ForceToken::new(config)?;
    let mut changes = BatchUpdateBuilder::new();
    changes.add(0, params.clone());
    scratch.update_state(changes.build(1))?;
    let logits = Tensor::zeros((1, config.vocab_size()), DType::F32, config.device())?;
    scratch.apply(&logits)?;
    candle_nn::ops::log_softmax(&logits, D::Minus1)?
        .index_select(choices, 1)?
        .to_vec2::<f32>()?;
    Ok(())
}

/// `--layout`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum LayoutArg {
    /// Qwen's chat template
    Chat,
    /// Plain text, no special tokens
    Raw,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(summary) => {
            summary.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Most rows per batch accepted (`--max-batch-rows`).
const MAX_BATCH_ROWS: usize = 4096;
/// Most padded tokens per batch accepted (`--token-budget`).
const MAX_TOKEN_BUDGET: usize = 1 << 24;

/// Judges the rows of `cli.data`, writes the submission and returns the run's summary.
///
/// # Errors
/// Bad arguments, unreadable inputs or model, or a failure while judging or writing; the
/// message names the file at fault.
fn run(cli: Cli) -> Result<Summary> {
    judge(prepare(cli)?)
}

/// A run ready to judge: everything checked, read, encoded and planned; nothing written but the
/// prompt dump.
struct Prepared {
    cli: Cli,
    data: PathBuf,
    out: PathBuf,
    calibration: Option<calibration::Fit>,
    source: setup::ModelSource,
    max_model_len: usize,
    choices: [u32; 3],
    inputs: inputs::Inputs,
    device: candle_core::Device,
    dtype: DType,
    tokenizer: tokenizers::Tokenizer,
    token_budget: usize,
    /// What produced this run: a checkpoint written with other settings is refused.
    settings: checkpoint::Settings,
}

/// Checks the arguments and the output path, reads the model's configuration and the rows,
/// encodes and plans them.
///
/// # Errors
/// As [`run`], for everything before the model is loaded.
fn prepare(cli: Cli) -> Result<Prepared> {
    ensure!(
        (1..=MAX_BATCH_ROWS).contains(&cli.max_batch_rows),
        "--max-batch-rows {} is out of range (1 to {MAX_BATCH_ROWS})",
        cli.max_batch_rows
    );
    if let Some(b) = cli.token_budget {
        ensure!(
            (1..=MAX_TOKEN_BUDGET).contains(&b),
            "--token-budget {b} is out of range (1 to {MAX_TOKEN_BUDGET})"
        );
    }
    ensure!(
        !(cli.calibrate.is_some() && cli.calibration.is_some()),
        "--calibrate fits a calibration and --calibration applies one: pass one of them"
    );
    let data = cli.data.clone().unwrap_or_else(setup::demo_data);
    // Where the submission goes, checked before any work (a symlink is written through).
    let out = files::output_path(&cli.out, &data)?;
    let calibration = cli
        .calibration
        .as_deref()
        .map(calibration::load)
        .transpose()?;

    let demo = cli.model.is_none() && cli.data.is_none();
    let (validate, max_model_len) = if demo {
        let validate = cli.validate.unwrap_or(DEMO_ROWS);
        let len = cli.max_model_len.unwrap_or(DEMO_MAX_MODEL_LEN);
        println!(
            "demo: Qwen2.5-Coder-0.5B-Instruct (GGUF), a 0.5B coder model, not the 3B instruct \
             model this judge targets; the first {validate} of the 100 bundled labelled rows, \
             prompts cut to {len} tokens (on a CPU; --validate 100 --max-model-len 8192 judges \
             them all, --model PATH another model)"
        );
        (Some(validate), len)
    } else {
        (
            cli.validate,
            cli.max_model_len.unwrap_or(DEFAULT_MAX_MODEL_LEN),
        )
    };
    let source = setup::ModelSource::resolve(cli.model.as_deref())?;
    let max_model_len = source.context(max_model_len);

    // Rows → prompts → token ids, and the plan of batches over all of them.
    let tokenizer = source.tokenizer(cli.tokenizer.as_deref())?;
    let layout = match cli.layout {
        LayoutArg::Chat => Layout::ChatTemplate,
        LayoutArg::Raw => Layout::Raw,
    };
    let encoder = PromptEncoder::new(&tokenizer, layout, max_model_len)?;
    let choices = prompt::choice_ids(&tokenizer)?;
    let inputs = inputs::load_inputs(&data, validate, &encoder, cli.swap)?;
    if cli.calibrate.is_some() {
        ensure!(
            inputs.entries.iter().all(|e| e.label.is_some()),
            "--calibrate needs labelled rows: pass a train-layout --data with --validate N"
        );
    }
    let (device, dtype) = setup::device_and_dtype(cli.cpu, cli.dtype)?;
    let token_budget = cli
        .token_budget
        .unwrap_or(if device.is_cuda() { 16384 } else { 2048 });
    let settings = checkpoint::Settings::default()
        .with("data", files::content_hash(&data)?)
        .with("model", files::model_identity(&source.path)?)
        .with("layout", format!("{layout:?}"))
        .with("max_model_len", max_model_len)
        .with("validate", format!("{validate:?}"))
        .with("dtype", format!("{dtype:?}"))
        .with("device", if device.is_cuda() { "cuda" } else { "cpu" })
        .with("swap", cli.swap)
        .with("token_budget", token_budget)
        .with("max_batch_rows", cli.max_batch_rows);
    Ok(Prepared {
        cli,
        data,
        out,
        calibration,
        source,
        max_model_len,
        choices,
        inputs,
        device,
        dtype,
        tokenizer,
        token_budget,
        settings,
    })
}

/// Loads the model and judges a prepared run: the engine loop, then the submission.
///
/// # Errors
/// As [`run`], for everything from the model load on.
fn judge(p: Prepared) -> Result<Summary> {
    let Prepared {
        cli,
        data,
        out,
        calibration,
        source,
        max_model_len,
        choices,
        inputs,
        device,
        dtype,
        tokenizer,
        token_budget,
        settings,
    } = p;
    let (resumed, mut results) = checkpoint::load(&out, cli.resume, &settings, &inputs)?;

    let loading = Instant::now();
    let model = Qwen2::load(&source.path, &device, dtype)?;
    let loaded = loading.elapsed().as_secs_f64();
    let plan = plan::plan_batches(
        &inputs,
        token_budget,
        cli.max_batch_rows,
        model.packs_rows(),
    );
    if let Some(path) = &cli.dump_prompts {
        dump::write_prompts(path, &inputs, &plan, &tokenizer)?;
        println!(
            "prompts, token ids and batch plan written to {}",
            path.display()
        );
    }
    let mut checkpoint =
        checkpoint::Checkpoint::resume(&checkpoint::checkpoint_path(&out), &settings, &resumed)?;

    // The engine: one processor for the whole run, told at every step how the batch changed.
    let processor_config = ProcessorConfig::builder()
        .max_batch_size(cli.max_batch_rows)
        .vocab_size(model.config().vocab_size)
        .device(device.clone())
        .build()?;
    let mut force = ForceToken::new(&processor_config)?;
    let params = Arc::new(RequestParams::new().with_allowed_token_ids(choices));
    force.validate_params(&params)?; // every request asks for the same three tokens
    let choice_columns = Tensor::new(&choices[..], &device)?;

    // First-use costs before the clock starts: the model's (kernel compilation, buffers, cuBLAS)
    // and those of the per-batch ops below.
    let warming = Instant::now();
    let largest = plan.iter().map(|b| b.tokens).max().unwrap_or(1);
    model.prepare(largest, cli.max_batch_rows)?;
    warm_up_judging(&processor_config, &params, &choice_columns)?;
    println!(
        "model {}: {} layers, vocab {}, {device:?} {dtype:?}, {:?} forward pass, loaded in {loaded:.1} s, \
         warmed up in {:.2} s; {} rows{}, {} batches",
        source.path.display(),
        model.config().num_hidden_layers,
        model.config().vocab_size,
        model.forward_path(),
        warming.elapsed().as_secs_f64(),
        inputs.entries.len(),
        if inputs.swap { " in both orders" } else { "" },
        plan.len()
    );

    let mut changes = BatchUpdateBuilder::new();
    let mut in_batch = 0; // rows of the persistent batch in use
    let pending = |b: &plan::Batch, results: &[Option<[f64; 3]>]| {
        b.items.iter().any(|&i| results[i].is_none())
    };
    let mut meter = report::Meter::new(
        plan.iter()
            .filter(|b| pending(b, &results))
            .map(|b| b.items.len())
            .sum(),
    );
    for batch in &plan {
        if !pending(batch, &results) {
            continue; // checkpointed by the interrupted run
        }
        // The previous batch's requests all finished; the new ones take the freed rows first.
        for row in 0..in_batch {
            changes.remove(row);
        }
        let n = batch.items.len();
        let mut at_row = vec![0; n]; // item of each row
        for (k, &item) in batch.items.iter().enumerate() {
            let row = changes.pop_removed().unwrap_or(k);
            let added = changes.add(row, params.clone());
            if let Some(prompt) = inputs.item_prompt(item) {
                added.with_prompt(prompt.clone());
            }
            at_row[row] = item;
        }
        force.update_state(changes.build(n))?;
        in_batch = n;

        // Forward pass, then the mask, in place: only A, B and tie keep their logits.
        let rows: Vec<&[u32]> = at_row
            .iter()
            .map(|&i| inputs.item_prompt(i).map_or(&[][..], |p| &p[..]))
            .collect();
        let logits = model.last_logits(&rows)?;
        force.apply(&logits)?;
        // Over the whole vocabulary only the three choices have mass left, so their
        // log-probabilities are the prediction; softmax3 renormalises them in f64 and owns the
        // fallback for non-finite rows.
        let choice_logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?
            .index_select(&choice_columns, 1)?
            .to_vec2::<f32>()?;
        let (mut new, mut fallbacks) = (Vec::with_capacity(n), 0);
        for (&item, lp) in at_row.iter().zip(&choice_logp) {
            let p = softmax3([lp[0], lp[1], lp[2]]);
            let mass: f32 = lp.iter().map(|l| l.exp()).sum();
            ensure!(
                p.fallback || (mass - 1.0).abs() < 1e-3,
                "ForceToken left mass outside A/B/tie"
            );
            fallbacks += usize::from(p.fallback);
            if results[item].is_none() {
                let (e, _) = inputs.item_entry(item);
                new.push(checkpoint::ItemResult {
                    item,
                    prediction: Prediction {
                        id: inputs.entries[e].id.clone(),
                        probs: p.probs,
                    },
                });
            }
            results[item] = Some(p.probs);
        }
        checkpoint.append(&new)?;
        meter.record(batch, new.len(), fallbacks);
    }
    let (counts, elapsed) = meter.finish();
    ensure!(
        counts.rows == 0 || counts.fallbacks < counts.rows,
        "every judged row gave non-finite logits and fell back to uniform: the model is broken \
         (no submission written)"
    );

    let entries = &inputs.entries;
    let raw = metrics::score_raw(&inputs, &results)?;
    let mut predictions = output::assemble(&inputs, &results);
    let swapped = inputs
        .swap
        .then(|| metrics::score(entries, &predictions))
        .transpose()?
        .flatten();
    let mut calibrated = None;
    if let Some(fit) = &calibration {
        for (p, e) in predictions.iter_mut().zip(entries) {
            if e.prompt.is_some() {
                p.probs = fit.calibration.apply(&calibration::Sample::new(e, p.probs));
            }
        }
        calibrated = metrics::score(entries, &predictions)?;
    }
    let mut fit_report = None;
    if let Some(path) = &cli.calibrate {
        let (samples, labels): (Vec<_>, Vec<_>) = entries
            .iter()
            .zip(&predictions)
            .filter(|(e, _)| e.prompt.is_some())
            .map(|(e, p)| {
                (
                    calibration::Sample::new(e, p.probs),
                    e.label.expect("labelled"),
                )
            })
            .unzip();
        let fit = calibration::fit_with_cv(
            &samples,
            &labels,
            format!(
                "{} on {} ({} rows{})",
                source.path.display(),
                data.display(),
                samples.len(),
                if inputs.swap { ", --swap" } else { "" }
            ),
        )?;
        calibration::save(path, &fit)?;
        fit_report = Some((path.clone(), fit));
    }
    output::write_submission(&out, &predictions)?;
    checkpoint.remove()?;
    Ok(Summary {
        out,
        rows: predictions.len(),
        resumed: resumed.results.len(),
        malformed: inputs.malformed,
        truncated: (inputs.truncated, max_model_len),
        counts,
        seconds: elapsed.as_secs_f64(),
        raw,
        swapped,
        calibrated,
        fit: fit_report,
        score: metrics::score(entries, &predictions)?,
    })
}
