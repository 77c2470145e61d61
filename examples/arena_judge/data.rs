//! Reading LMSYS Chatbot Arena CSV files.
//!
//! Two layouts are accepted, detected from the header (column order does not matter, extra
//! columns are ignored):
//! - train: `id,model_a,model_b,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie`
//! - test: `id,prompt,response_a,response_b`
//!
//! `prompt`, `response_a` and `response_b` hold JSON lists of strings, one per conversation turn,
//! whose entries may be `null`. The text sometimes contains escaped *lone* UTF-16 surrogates
//! (e.g. `"\ud83d"` without its low half) that strict JSON parsers reject; these are replaced by
//! U+FFFD before parsing (see [`replace_lone_surrogates`]).
//!
//! A file-level problem (unreadable file, missing column) is an `Err` of the whole read; a
//! problem confined to one row (bad id, unparsable JSON, bad labels) becomes that row's
//! [`RowError`] so the caller can predict it uniform and keep going.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Columns every arena CSV must have.
pub const REQUIRED_COLUMNS: [&str; 4] = ["id", "prompt", "response_a", "response_b"];
/// Label columns of the train layout, in the order A, B, tie.
pub const LABEL_COLUMNS: [&str; 3] = ["winner_model_a", "winner_model_b", "winner_tie"];

/// Which of the two arena layouts a file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Has the three `winner_*` label columns: every parsed row carries a [`Label`].
    Train,
    /// No label columns: every row's `label` is `None`.
    Test,
}

/// The human verdict of a train row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// `winner_model_a` = 1.
    A,
    /// `winner_model_b` = 1.
    B,
    /// `winner_tie` = 1.
    Tie,
}

impl Label {
    /// Class index in submission column order: A = 0, B = 1, tie = 2.
    pub fn index(self) -> usize {
        match self {
            Label::A => 0,
            Label::B => 1,
            Label::Tie => 2,
        }
    }

    /// One-hot vector in submission column order (A, B, tie).
    #[cfg(test)]
    pub fn one_hot(self) -> [f64; 3] {
        let mut v = [0.0; 3];
        v[self.index()] = 1.0;
        v
    }

    /// Builds a label from the three `winner_*` values (A, B, tie); exactly one must be 1 and the
    /// others 0.
    ///
    /// # Errors
    /// A message describing the values when they are not one-hot.
    pub fn from_one_hot(values: [f64; 3]) -> Result<Label, String> {
        let ones: Vec<usize> = (0..3).filter(|&i| values[i] == 1.0).collect();
        let zeros = values.iter().filter(|&&v| v == 0.0).count();
        match (ones.as_slice(), zeros) {
            ([0], 2) => Ok(Label::A),
            ([1], 2) => Ok(Label::B),
            ([2], 2) => Ok(Label::Tie),
            _ => Err(format!(
                "labels (winner_model_a, winner_model_b, winner_tie) = {values:?} are not one-hot"
            )),
        }
    }
}

/// One successfully parsed arena row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Kaggle row id (values exceed `u32`).
    pub id: u64,
    /// The user turns; `None` where the JSON entry was `null`.
    pub prompt: Vec<Option<String>>,
    /// Model A's turns; `None` where the JSON entry was `null`.
    pub response_a: Vec<Option<String>>,
    /// Model B's turns; `None` where the JSON entry was `null`.
    pub response_b: Vec<Option<String>>,
    /// The verdict, for train-layout files.
    pub label: Option<Label>,
}

/// Why one row of a file could not be used.
#[derive(Debug, Clone, PartialEq)]
pub struct RowError {
    /// The file the row came from.
    pub file: PathBuf,
    /// 1-based data-row number (the first row after the header is 1).
    pub row: usize,
    /// 1-based line of the file where the record starts (fields may span lines).
    pub line: u64,
    /// The row's id, when the id field itself parsed.
    pub id: Option<u64>,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: row {} (line {}",
            self.file.display(),
            self.row,
            self.line
        )?;
        if let Some(id) = self.id {
            write!(f, ", id {id}")?;
        }
        write!(f, "): {}", self.reason)
    }
}

impl std::error::Error for RowError {}

/// The rows of one arena CSV file, in file order.
#[derive(Debug, Clone)]
pub struct ArenaCsv {
    /// The layout detected from the header.
    pub format: Format,
    /// One entry per data row, in file order: the parsed row or why it could not be parsed.
    pub rows: Vec<Result<Row, RowError>>,
}

#[cfg(test)]
impl ArenaCsv {
    /// Number of rows that parsed.
    pub fn n_ok(&self) -> usize {
        self.rows.iter().filter(|r| r.is_ok()).count()
    }

    /// The rows that failed to parse.
    pub fn errors(&self) -> impl Iterator<Item = &RowError> {
        self.rows.iter().filter_map(|r| r.as_ref().err())
    }
}

/// Column positions found in a header.
#[derive(Debug, Clone, Copy)]
struct Columns {
    id: usize,
    prompt: usize,
    response_a: usize,
    response_b: usize,
    labels: Option<[usize; 3]>,
}

/// Reads an arena CSV file: detects the layout from its header and parses every row.
///
/// # Errors
/// The file cannot be opened or read, has no header, or lacks a needed column (the message names
/// the file and the missing columns). Problems of single rows are *not* errors here: they are
/// returned as [`RowError`] entries of [`ArenaCsv::rows`].
pub fn read_arena_csv(path: &Path) -> anyhow::Result<ArenaCsv> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    parse_arena_csv(std::io::BufReader::new(file), path)
}

/// Like [`read_arena_csv`], returning only the rows.
///
/// # Errors
/// As [`read_arena_csv`].
#[cfg(test)]
pub fn read_rows(path: &Path) -> anyhow::Result<Vec<Result<Row, RowError>>> {
    Ok(read_arena_csv(path)?.rows)
}

/// Parses arena CSV text from any reader; `source` names it in errors.
///
/// # Errors
/// As [`read_arena_csv`].
pub fn parse_arena_csv<R: std::io::Read>(reader: R, source: &Path) -> anyhow::Result<ArenaCsv> {
    let mut csv = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(reader);
    let headers = csv
        .byte_headers()
        .with_context(|| format!("{}: cannot read the CSV header", source.display()))?
        .clone();
    if headers.is_empty() {
        bail!("{}: empty file (no CSV header)", source.display());
    }
    let names: Vec<String> = headers
        .iter()
        .map(|h| {
            String::from_utf8_lossy(h)
                .trim_start_matches('\u{feff}')
                .trim()
                .to_string()
        })
        .collect();
    let (columns, format) = locate_columns(&names, source)?;

    let mut rows = Vec::new();
    let mut record = csv::ByteRecord::new();
    loop {
        let row_no = rows.len() + 1;
        match csv.read_byte_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
                rows.push(parse_record(&record, &columns, source, row_no, line));
            }
            Err(e) => {
                if let csv::ErrorKind::Io(_) = e.kind() {
                    return Err(e).with_context(|| format!("cannot read {}", source.display()));
                }
                let line = e.position().map_or(0, |p| p.line());
                rows.push(Err(RowError {
                    file: source.to_path_buf(),
                    row: row_no,
                    line,
                    id: None,
                    reason: format!("malformed CSV record: {e}"),
                }));
            }
        }
    }
    Ok(ArenaCsv { format, rows })
}

/// Finds the needed columns by name and decides the layout.
fn locate_columns(names: &[String], source: &Path) -> anyhow::Result<(Columns, Format)> {
    let find = |name: &str| names.iter().position(|n| n == name);
    let missing: Vec<&str> = REQUIRED_COLUMNS
        .iter()
        .copied()
        .filter(|c| find(c).is_none())
        .collect();
    let label_pos: Vec<Option<usize>> = LABEL_COLUMNS.iter().map(|c| find(c)).collect();
    let n_labels = label_pos.iter().filter(|p| p.is_some()).count();
    let missing_labels: Vec<&str> = LABEL_COLUMNS
        .iter()
        .zip(&label_pos)
        .filter(|(_, p)| p.is_none())
        .map(|(c, _)| *c)
        .collect();
    // Some but not all label columns: the file is meant to be train-format, so the rest are missing.
    let mut all_missing = missing.clone();
    if n_labels > 0 && n_labels < 3 {
        all_missing.extend(missing_labels);
    }
    if !all_missing.is_empty() {
        bail!(
            "{}: missing column(s) {} (found: {}); expected the train layout \
             `id,model_a,model_b,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie` \
             or the test layout `id,prompt,response_a,response_b`",
            source.display(),
            all_missing
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", "),
            names.join(","),
        );
    }
    let pos = |c: &str| find(c).expect("checked above");
    let labels = (n_labels == 3).then(|| {
        [
            pos(LABEL_COLUMNS[0]),
            pos(LABEL_COLUMNS[1]),
            pos(LABEL_COLUMNS[2]),
        ]
    });
    let format = if labels.is_some() {
        Format::Train
    } else {
        Format::Test
    };
    Ok((
        Columns {
            id: pos("id"),
            prompt: pos("prompt"),
            response_a: pos("response_a"),
            response_b: pos("response_b"),
            labels,
        },
        format,
    ))
}

/// Parses one CSV record into a [`Row`], or explains why it cannot be.
fn parse_record(
    record: &csv::ByteRecord,
    columns: &Columns,
    source: &Path,
    row: usize,
    line: u64,
) -> Result<Row, RowError> {
    let err = |id: Option<u64>, reason: String| RowError {
        file: source.to_path_buf(),
        row,
        line,
        id,
        reason,
    };
    let field = |i: usize, name: &str| -> Result<Cow<'_, str>, String> {
        record.get(i).map(String::from_utf8_lossy).ok_or_else(|| {
            format!(
                "record has {} field(s), so column `{name}` (field {}) is missing",
                record.len(),
                i + 1
            )
        })
    };

    let id_text = field(columns.id, "id").map_err(|r| err(None, r))?;
    let parsed_id = id_text.trim().parse::<u64>().map_err(|e| {
        err(
            None,
            format!("id {:?} is not an unsigned integer: {e}", id_text),
        )
    })?;
    let id = Some(parsed_id);

    let turns = |i: usize, name: &str| -> Result<Vec<Option<String>>, RowError> {
        let text = field(i, name).map_err(|r| err(id, r))?;
        parse_turns(&text).map_err(|r| err(id, format!("column `{name}`: {r}")))
    };
    let prompt = turns(columns.prompt, "prompt")?;
    let response_a = turns(columns.response_a, "response_a")?;
    let response_b = turns(columns.response_b, "response_b")?;

    let label = match columns.labels {
        None => None,
        Some(pos) => {
            let mut values = [0.0; 3];
            for (k, &p) in pos.iter().enumerate() {
                let text = field(p, LABEL_COLUMNS[k]).map_err(|r| err(id, r))?;
                values[k] = text.trim().parse::<f64>().map_err(|e| {
                    err(
                        id,
                        format!(
                            "column `{}`: {:?} is not a number: {e}",
                            LABEL_COLUMNS[k], text
                        ),
                    )
                })?;
            }
            Some(Label::from_one_hot(values).map_err(|r| err(id, r))?)
        }
    };

    Ok(Row {
        id: parsed_id,
        prompt,
        response_a,
        response_b,
        label,
    })
}

/// Parses one turn-list cell: a JSON list whose entries are strings or `null`.
///
/// Lone UTF-16 surrogate escapes are replaced by U+FFFD first (see [`replace_lone_surrogates`]).
///
/// # Errors
/// A message when the text is not valid JSON or not a list of strings/nulls.
pub fn parse_turns(json: &str) -> Result<Vec<Option<String>>, String> {
    let fixed = replace_lone_surrogates(json);
    serde_json::from_str::<Vec<Option<String>>>(&fixed).map_err(|e| {
        format!(
            "not a JSON list of strings: {e} (starts with {:?})",
            preview(json, 60)
        )
    })
}

/// The first `max_chars` characters of `s`, with `…` appended when cut.
fn preview(s: &str, max_chars: usize) -> String {
    let mut out: String = s.chars().take(max_chars).collect();
    if s.chars().nth(max_chars).is_some() {
        out.push('…');
    }
    out
}

/// Replaces every `\uXXXX` escape that is an unpaired UTF-16 surrogate by `\ufffd`.
///
/// A high surrogate (`D800`–`DBFF`) immediately followed by a low-surrogate escape
/// (`DC00`–`DFFF`) is a valid pair and is kept; any other surrogate escape is unpaired. Escaped
/// backslashes (`\\u…` is a literal backslash then `u`) are respected. Text without lone
/// surrogates is returned borrowed and unchanged. Never fails: malformed escapes are left for
/// the JSON parser to report.
pub fn replace_lone_surrogates(json: &str) -> Cow<'_, str> {
    let bytes = json.as_bytes();
    // Returns the code unit of a `\uXXXX` escape starting at byte `i`, if there is one.
    let escape_at = |i: usize| -> Option<u16> {
        if bytes.get(i) != Some(&b'\\') || bytes.get(i + 1) != Some(&b'u') {
            return None;
        }
        let hex = json.get(i + 2..i + 6)?;
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u16::from_str_radix(hex, 16).ok()
    };
    let is_high = |u: u16| (0xD800..=0xDBFF).contains(&u);
    let is_low = |u: u16| (0xDC00..=0xDFFF).contains(&u);

    let mut out: Option<String> = None;
    let mut copied_to = 0; // bytes of `json` already copied into `out`
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        match escape_at(i) {
            Some(u) if is_high(u) && escape_at(i + 6).is_some_and(is_low) => i += 12,
            Some(u) if is_high(u) || is_low(u) => {
                let buf = out.get_or_insert_with(|| String::with_capacity(json.len()));
                buf.push_str(&json[copied_to..i]);
                buf.push_str("\\ufffd");
                i += 6;
                copied_to = i;
            }
            Some(_) => i += 6,
            // `\\`, `\"`, `\n`, ...: skip the escaped character so an escaped backslash is never
            // mistaken for the start of an escape.
            None => i += 2,
        }
    }
    match out {
        None => Cow::Borrowed(json),
        Some(mut buf) => {
            buf.push_str(&json[copied_to.min(json.len())..]);
            Cow::Owned(buf)
        }
    }
}
