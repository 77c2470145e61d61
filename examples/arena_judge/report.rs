//! What the user sees of a run: the progress bar with its counters, and the final summary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::plan::Batch;

/// Counters of the rows judged by this process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Rows run through the model.
    pub rows: usize,
    /// Rows whose predictions are new (a batch that an interrupted run checkpointed only in
    /// part is run again whole, but only its missing rows are new).
    pub judged: usize,
    /// Real prompt tokens judged.
    pub tokens: usize,
    /// Padded tokens run through the model.
    pub padded: usize,
    /// Rows whose probabilities were not finite and fell back to uniform.
    pub fallbacks: usize,
}

/// Progress bar and [`Counts`] of the batches run by this process.
#[derive(Debug)]
pub struct Meter {
    bar: ProgressBar,
    start: Instant,
    counts: Counts,
}

impl Meter {
    /// A meter for `total` rows (the bar is shown only when stderr is a terminal).
    pub fn new(total: usize) -> Self {
        let bar = ProgressBar::new(total as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} {wide_bar} {pos}/{len} rows {per_sec} {msg} eta {eta}",
            )
            .expect("valid template"),
        );
        Self {
            bar,
            start: Instant::now(),
            counts: Counts::default(),
        }
    }

    /// Records a finished batch, of which `new` rows had no prediction yet.
    pub fn record(&mut self, batch: &Batch, new: usize, fallbacks: usize) {
        let c = &mut self.counts;
        c.rows += batch.entries.len();
        c.judged += new;
        c.tokens += batch.tokens;
        c.padded += batch.padded();
        c.fallbacks += fallbacks;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar
            .set_message(format!("{:.0} tokens/s", c.tokens as f64 / secs));
        self.bar.inc(batch.entries.len() as u64);
    }

    /// Removes the bar; returns the counters and the time since [`Meter::new`].
    pub fn finish(&self) -> (Counts, Duration) {
        self.bar.finish_and_clear();
        (self.counts, self.start.elapsed())
    }
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The written submission.
    pub out: PathBuf,
    /// Whether this was the demo (no `--model`).
    pub demo: bool,
    /// Rows in the submission (malformed ones included).
    pub rows: usize,
    /// Rows taken from the checkpoint of an earlier run.
    pub resumed: usize,
    /// Malformed rows.
    pub malformed: usize,
    /// Truncated prompts and the context they were cut to.
    pub truncated: (usize, usize),
    /// The counters of this run's batches.
    pub counts: Counts,
    /// Seconds spent judging (forward passes and all) in this run.
    pub seconds: f64,
    /// Log loss, accuracy and labelled rows, when the data has labels.
    pub score: Option<(f64, f64, usize)>,
}

impl Summary {
    /// Prints the summary on stdout.
    pub fn print(&self) {
        let m = &self.counts;
        let secs = self.seconds.max(1e-9);
        println!("summary");
        println!(
            "  rows         {} in the submission ({} judged now, {} from the checkpoint)",
            self.rows, m.judged, self.resumed
        );
        println!("  tokens       {} real, {} padded", m.tokens, m.padded);
        println!(
            "  time         {:.2} s, {:.1} rows/s, {:.0} tokens/s",
            self.seconds,
            m.rows as f64 / secs,
            m.tokens as f64 / secs
        );
        println!(
            "  truncated    {} rows (to --max-model-len {})",
            self.truncated.0, self.truncated.1
        );
        println!("  malformed    {} rows", self.malformed);
        println!("  non-finite   {} rows fell back to uniform", m.fallbacks);
        if let Some((loss, acc, n)) = self.score {
            println!("  log loss     {loss:.6} ({n} labelled rows)");
            println!("  accuracy     {acc:.4}");
        }
        println!("  submission   {}", self.out.display());
    }
}
