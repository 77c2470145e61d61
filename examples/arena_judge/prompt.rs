//! Building and tokenizing the judge prompt of one arena row.
//!
//! The user message has three sections, separated by a line of 25 `#`:
//!
//! ```text
//! PROMPT:
//! <the user's turns>
//! #########################
//! RESPONSE A:
//! <model A's turns>
//! #########################
//! RESPONSE B:
//! <model B's turns>
//! ```
//!
//! Turns are rendered as plain text (multi-turn lists get `[Turn N]` labels, `null` entries become
//! [`NO_TEXT`]), never as the raw JSON. The message is wrapped in one of two [`Layout`]s and
//! tokenized with the `tokenizers` crate. Rows longer than the model's context are truncated by
//! [`PromptEncoder::encode`]: the budget is shared fairly between the three sections, cuts happen
//! at token boundaries and are marked with [`TRUNCATION_MARK`], and the final ids always fit.

use std::path::Path;

use anyhow::{anyhow, bail, ensure, Context};
use tokenizers::Tokenizer;

/// The system prompt of the judge.
pub const SYSTEM_PROMPT: &str = "Please read the following prompt and two responses. Determine which response is better. If the responses are relatively the same, respond with 'tie'. Otherwise respond with 'A' or 'B' to indicate which is better.";
/// The line between two sections of the user message (25 `#`).
pub const SECTION_SEPARATOR: &str = "#########################";
/// Header of the prompt section.
pub const PROMPT_HEADER: &str = "PROMPT:";
/// Header of model A's section.
pub const RESPONSE_A_HEADER: &str = "RESPONSE A:";
/// Header of model B's section.
pub const RESPONSE_B_HEADER: &str = "RESPONSE B:";
/// Appended to every section that was cut to fit the context.
pub const TRUNCATION_MARK: &str = " …[truncated]";
/// Shown for a turn that is JSON `null` or empty, and for an empty turn list.
pub const NO_TEXT: &str = "(no text)";
/// Default context length of the model, in tokens.
pub const DEFAULT_MAX_MODEL_LEN: usize = 8192;
/// Qwen chat-template token that opens a message.
pub const IM_START: &str = "<|im_start|>";
/// Qwen chat-template token that closes a message.
pub const IM_END: &str = "<|im_end|>";
/// The three answers the judge may give, in submission column order (A, B, tie).
pub const CHOICES: [&str; 3] = ["A", "B", "tie"];

/// How the system prompt and the user message are put together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Qwen's chat template:
    /// `<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n`.
    #[default]
    ChatTemplate,
    /// Plain text without special tokens: `{system}\n\n{user}\n`.
    Raw,
}

/// Renders one column's turn list as readable text.
///
/// A single turn is its text; several turns are each headed `[Turn N]` and separated by a blank
/// line; `null` or empty turns and an empty list render as [`NO_TEXT`].
pub fn render_turns(turns: &[Option<String>]) -> String {
    let text = |t: &Option<String>| match t.as_deref() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => NO_TEXT.to_string(),
    };
    match turns {
        [] => NO_TEXT.to_string(),
        [only] => text(only),
        many => many
            .iter()
            .enumerate()
            .map(|(i, t)| format!("[Turn {}]\n{}", i + 1, text(t)))
            .collect::<Vec<_>>()
            .join("\n\n"),
    }
}

/// The user message from the three already rendered sections.
pub fn user_message(prompt: &str, response_a: &str, response_b: &str) -> String {
    format!(
        "{PROMPT_HEADER}\n{prompt}\n{SECTION_SEPARATOR}\n\
         {RESPONSE_A_HEADER}\n{response_a}\n{SECTION_SEPARATOR}\n\
         {RESPONSE_B_HEADER}\n{response_b}"
    )
}

/// The whole prompt text of `layout` around a user message (for display; encoding goes through
/// [`PromptEncoder`], which keeps special-token look-alikes in row text from becoming special).
#[cfg(test)]
pub fn prompt_text(layout: Layout, user: &str) -> String {
    match layout {
        Layout::ChatTemplate => format!(
            "{IM_START}system\n{SYSTEM_PROMPT}{IM_END}\n{IM_START}user\n{user}{IM_END}\n{IM_START}assistant\n"
        ),
        Layout::Raw => format!("{SYSTEM_PROMPT}\n\n{user}\n"),
    }
}

/// Splits `budget` tokens fairly between three sections of `lengths` tokens (water-filling).
///
/// When everything fits, each section keeps its length. Otherwise every section gets an equal
/// share, a section shorter than its share keeps its length and leaves the rest to the others,
/// and integer remainders go to the longer sections. The shares never exceed the lengths, and
/// they sum to `min(budget, sum(lengths))`.
pub fn fair_shares(lengths: [usize; 3], budget: usize) -> [usize; 3] {
    if lengths.iter().sum::<usize>() <= budget {
        return lengths;
    }
    let mut order = [0usize, 1, 2];
    order.sort_by_key(|&i| lengths[i]);
    let mut shares = [0usize; 3];
    let mut left = budget;
    for (k, &i) in order.iter().enumerate() {
        let share = (left / (3 - k)).min(lengths[i]);
        shares[i] = share;
        left -= share;
    }
    shares
}

/// Loads a `tokenizer.json`.
///
/// # Errors
/// The file is missing or is not a valid tokenizer (the message names the file and suggests
/// `scripts/setup.sh`).
pub fn load_tokenizer(path: &Path) -> anyhow::Result<Tokenizer> {
    if !path.is_file() {
        bail!(
            "tokenizer {} not found: run scripts/setup.sh to fetch the Qwen2.5 tokenizer",
            path.display()
        );
    }
    Tokenizer::from_file(path).map_err(|e| anyhow!("cannot load tokenizer {}: {e}", path.display()))
}

/// The token ids of the answers `A`, `B` and `tie`, in that order.
///
/// # Errors
/// A choice does not encode to exactly one token (the message shows what it encodes to), or the
/// tokenizer fails.
pub fn choice_ids(tokenizer: &Tokenizer) -> anyhow::Result<[u32; 3]> {
    let mut ids = [0u32; 3];
    for (slot, choice) in ids.iter_mut().zip(CHOICES) {
        let enc = tokenizer
            .encode(choice, false)
            .map_err(|e| anyhow!("cannot tokenize choice {choice:?}: {e}"))?;
        match enc.get_ids() {
            [id] => *slot = *id,
            other => bail!(
                "choice {choice:?} must be exactly one token, but the tokenizer gives {} token(s) {:?}",
                other.len(),
                other
            ),
        }
    }
    Ok(ids)
}

/// A tokenized prompt ready for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPrompt {
    /// Token ids of the whole prompt (template included); at most `max_model_len - 1`.
    pub ids: Vec<u32>,
    /// Whether any section was cut to fit.
    pub truncated: bool,
}

/// Turns arena rows into token ids of one [`Layout`] that fit a context of `max_model_len`.
///
/// Text from the rows is tokenized with special-token recognition switched off, so a literal
/// `<|im_end|>` inside a response stays ordinary text and cannot break the template; only the
/// template's own special tokens become their single ids.
#[derive(Clone)]
pub struct PromptEncoder {
    tokenizer: Tokenizer,
    layout: Layout,
    max_model_len: usize,
    /// Ids placed before the per-row body.
    prefix: Vec<u32>,
    /// Ids placed after the per-row body.
    suffix: Vec<u32>,
    /// Template tokens around the three sections' own tokens.
    overhead: usize,
    /// Tokens of [`TRUNCATION_MARK`] alone (the mark after kept text).
    mark_len: usize,
    /// Tokens of the bare mark alone (a section cut to nothing).
    bare_len: usize,
    /// Prompt length with every section replaced by the bare mark: the smallest prompt.
    minimal_len: usize,
}

impl std::fmt::Debug for PromptEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptEncoder")
            .field("layout", &self.layout)
            .field("max_model_len", &self.max_model_len)
            .field("template_tokens", &self.overhead)
            .finish_non_exhaustive()
    }
}

impl PromptEncoder {
    /// Prepares an encoder for `layout` and a context of `max_model_len` tokens (prompt plus the
    /// one generated token).
    ///
    /// # Errors
    /// The chat template's special tokens are missing from the tokenizer, tokenization fails, or
    /// `max_model_len` is too small for the fixed template with every section cut down to its
    /// truncation mark (the message gives the number of tokens needed).
    pub fn new(
        tokenizer: &Tokenizer,
        layout: Layout,
        max_model_len: usize,
    ) -> anyhow::Result<Self> {
        let mut tokenizer = tokenizer.clone();
        tokenizer.set_encode_special_tokens(true);
        // Lengths are managed here; a truncation or padding setting in tokenizer.json must not
        // silently cut or pad the ids.
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("cannot disable the tokenizer's truncation: {e}"))?;
        tokenizer.with_padding(None);
        let special = |t: &str| {
            tokenizer.token_to_id(t).ok_or_else(|| {
                anyhow!("the tokenizer has no {t} token, which the chat template needs")
            })
        };
        let (prefix, suffix) = match layout {
            Layout::ChatTemplate => {
                let (start, end) = (special(IM_START)?, special(IM_END)?);
                let mut prefix = vec![start];
                prefix.extend(encode_plain(
                    &tokenizer,
                    &format!("system\n{SYSTEM_PROMPT}"),
                )?);
                prefix.push(end);
                prefix.extend(encode_plain(&tokenizer, "\n")?);
                prefix.push(start);
                let mut suffix = vec![end];
                suffix.extend(encode_plain(&tokenizer, "\n")?);
                suffix.push(start);
                suffix.extend(encode_plain(&tokenizer, "assistant\n")?);
                (prefix, suffix)
            }
            Layout::Raw => (Vec::new(), Vec::new()),
        };
        let mut encoder = PromptEncoder {
            tokenizer,
            layout,
            max_model_len,
            prefix,
            suffix,
            overhead: 0,
            mark_len: 0,
            bare_len: 0,
            minimal_len: 0,
        };
        let bare = bare_mark();
        encoder.mark_len = encode_plain(&encoder.tokenizer, TRUNCATION_MARK)?.len();
        encoder.bare_len = encode_plain(&encoder.tokenizer, bare)?.len();
        encoder.minimal_len = encoder.assemble([bare, bare, bare])?.len();
        encoder.overhead = encoder.minimal_len.saturating_sub(3 * encoder.bare_len);
        if encoder.minimal_len + 1 > max_model_len {
            bail!(
                "max_model_len {max_model_len} is too small: the fixed prompt template ({layout:?} \
                 layout) with every section cut to {bare:?} takes {} tokens, plus 1 generated \
                 token = {}",
                encoder.minimal_len,
                encoder.minimal_len + 1,
            );
        }
        Ok(encoder)
    }

    /// The most prompt tokens a row may have: `max_model_len - 1` (room for the answer token).
    pub fn max_prompt_tokens(&self) -> usize {
        self.max_model_len - 1
    }

    /// The smallest `max_model_len` this layout accepts: the template with every section cut to
    /// its mark, plus the generated token.
    #[cfg(test)]
    pub fn min_model_len(&self) -> usize {
        self.minimal_len + 1
    }

    /// Builds and tokenizes the prompt of one row, truncating it to fit when needed.
    ///
    /// Rows that fit are encoded untouched. Otherwise the tokens left after the template are
    /// shared between the three sections with [`fair_shares`]; each section longer than its
    /// share is cut at a token boundary and gets [`TRUNCATION_MARK`]. Because BPE merges at a cut
    /// can change counts, the result is re-tokenized and the budget shrunk until it fits.
    ///
    /// If even the smallest budget does not fit (possible only right at
    /// [`PromptEncoder::min_model_len`], where a short section kept whole can tokenize one token
    /// longer in context than alone), every section is replaced by its mark, which always fits.
    ///
    /// # Errors
    /// Tokenization fails.
    pub fn encode(
        &self,
        prompt: &[Option<String>],
        response_a: &[Option<String>],
        response_b: &[Option<String>],
    ) -> anyhow::Result<EncodedPrompt> {
        let sections = [
            render_turns(prompt),
            render_turns(response_a),
            render_turns(response_b),
        ];
        let limit = self.max_prompt_tokens();
        let ids = self.assemble([&sections[0], &sections[1], &sections[2]])?;
        if ids.len() <= limit {
            return Ok(EncodedPrompt {
                ids,
                truncated: false,
            });
        }

        // Token boundaries (byte offsets where each token starts) of every section on its own.
        let mut starts: Vec<Vec<usize>> = Vec::with_capacity(3);
        for s in &sections {
            let enc = self
                .tokenizer
                .encode(s.as_str(), false)
                .map_err(|e| anyhow!("tokenization failed: {e}"))?;
            starts.push(enc.get_offsets().iter().map(|&(a, _)| a).collect());
        }
        let lengths = [starts[0].len(), starts[1].len(), starts[2].len()];

        let mut budget = limit.saturating_sub(self.overhead);
        loop {
            let shares = self.shares_with_marks(lengths, budget);
            let texts: Vec<String> = (0..3)
                .map(|i| cut_section(&sections[i], &starts[i], shares[i]))
                .collect();
            let ids = self.assemble([&texts[0], &texts[1], &texts[2]])?;
            if ids.len() <= limit {
                return Ok(EncodedPrompt {
                    ids,
                    truncated: true,
                });
            }
            if budget == 0 {
                // Last resort: the smallest prompt, which `new` checked to fit.
                let bare = bare_mark();
                let ids = self.assemble([bare, bare, bare])?;
                ensure!(
                    ids.len() <= limit,
                    "internal error: the minimal prompt has {} tokens, over the limit {limit}",
                    ids.len()
                );
                return Ok(EncodedPrompt {
                    ids,
                    truncated: true,
                });
            }
            budget = budget.saturating_sub((ids.len() - limit).max(1));
        }
    }

    /// Shares of `budget` for sections of `lengths` tokens, after setting aside room for the
    /// truncation mark of every section that will be cut. A section is only cut when the cut
    /// form (share + its mark) is shorter than the section; shorter ones are kept whole.
    fn shares_with_marks(&self, lengths: [usize; 3], budget: usize) -> [usize; 3] {
        let mut n_cut = 0;
        loop {
            let mut shares = fair_shares(lengths, budget.saturating_sub(n_cut * self.mark_len));
            let mut n = 0;
            for i in 0..3 {
                if shares[i] < lengths[i] {
                    let mark = if shares[i] == 0 {
                        self.bare_len
                    } else {
                        self.mark_len
                    };
                    if shares[i] + mark >= lengths[i] {
                        shares[i] = lengths[i];
                    } else {
                        n += 1;
                    }
                }
            }
            if n <= n_cut {
                return shares;
            }
            n_cut = n;
        }
    }

    /// Token ids of the whole prompt for three section texts.
    fn assemble(&self, sections: [&str; 3]) -> anyhow::Result<Vec<u32>> {
        let user = user_message(sections[0], sections[1], sections[2]);
        let body = match self.layout {
            Layout::ChatTemplate => format!("user\n{user}"),
            Layout::Raw => format!("{SYSTEM_PROMPT}\n\n{user}\n"),
        };
        let mut ids = Vec::with_capacity(self.prefix.len() + body.len() / 3 + self.suffix.len());
        ids.extend_from_slice(&self.prefix);
        ids.extend(encode_plain(&self.tokenizer, &body)?);
        ids.extend_from_slice(&self.suffix);
        Ok(ids)
    }
}

/// The first `keep` tokens of `text` (whose tokens start at byte offsets `starts`) followed by
/// the truncation mark, or `text` itself when `keep` covers every token.
fn cut_section(text: &str, starts: &[usize], keep: usize) -> String {
    if keep >= starts.len() {
        return text.to_string();
    }
    let mut end = starts[keep].min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    if head.trim().is_empty() {
        bare_mark().to_string()
    } else {
        format!("{head}{TRUNCATION_MARK}")
    }
}

/// The truncation mark without its leading space, used when nothing of a section is kept.
fn bare_mark() -> &'static str {
    TRUNCATION_MARK.trim_start()
}

/// Ids of `text` with no post-processing (the encoder's special-token setting applies).
fn encode_plain(tokenizer: &Tokenizer, text: &str) -> anyhow::Result<Vec<u32>> {
    let enc = tokenizer
        .encode_fast(text, false)
        .map_err(|e| anyhow!("tokenization failed: {e}"))
        .with_context(|| format!("while encoding {} bytes of prompt text", text.len()))?;
    Ok(enc.get_ids().to_vec())
}
