//! CSV reading: both layouts, decoded turns, labels, per-row errors, lone surrogates.

use super::*;
use crate::data::{Format, Label};

#[test]
fn train_first100_parses_every_row() {
    let csv = crate::data::read_arena_csv(&train_path()).unwrap();
    assert_eq!(csv.format, Format::Train);
    assert_eq!(csv.rows.len(), 100);
    assert_eq!(
        csv.n_ok(),
        100,
        "errors: {:?}",
        csv.errors().collect::<Vec<_>>()
    );
    let rows = ok_rows(&train_path());
    let direct = direct_csv(&train_path());
    assert_eq!(rows.len(), direct.len());
    let mut multi = 0;
    for (row, (id, labels)) in rows.iter().zip(&direct) {
        assert_eq!(row.id, *id);
        let label = row.label.expect("train rows carry labels");
        assert_eq!(label.one_hot(), labels.unwrap(), "id {id}");
        assert_eq!(row.prompt.len(), row.response_a.len(), "id {id}");
        assert_eq!(row.prompt.len(), row.response_b.len(), "id {id}");
        assert!(!row.prompt.is_empty());
        if row.prompt.len() > 1 {
            multi += 1;
        }
    }
    assert!(multi > 0, "expected multi-turn rows in train_first100.csv");
    // The three classes all occur.
    for l in [Label::A, Label::B, Label::Tie] {
        assert!(rows.iter().any(|r| r.label == Some(l)));
    }
}

#[test]
fn train_text_is_decoded_not_raw_json() {
    let rows = ok_rows(&train_path());
    // id 30192 has escaped surrogate pairs (\ud83c\udf4d = pineapple) in response_a.
    let row = rows.iter().find(|r| r.id == 30192).unwrap();
    let text = row.response_a[1].as_deref().unwrap();
    assert!(text.contains('\u{1F34D}'), "surrogate pair not decoded");
    assert!(!text.contains("\\u"));
    for r in &rows {
        for t in r
            .prompt
            .iter()
            .chain(&r.response_a)
            .chain(&r.response_b)
            .flatten()
        {
            assert!(!t.starts_with("[\""), "id {}: raw JSON kept", r.id);
        }
    }
}

#[test]
fn test_csv_parses_without_labels() {
    let csv = crate::data::read_arena_csv(&test_path()).unwrap();
    assert_eq!(csv.format, Format::Test);
    let rows = ok_rows(&test_path());
    assert_eq!(rows.len(), 3);
    let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
    let direct: Vec<u64> = direct_csv(&test_path()).iter().map(|d| d.0).collect();
    assert_eq!(ids, direct);
    assert_eq!(ids, vec![136060, 211333, 1233961]);
    assert!(rows.iter().all(|r| r.label.is_none()));
    assert_eq!(rows[0].response_a, vec![s("You have two oranges today.")]);
}

#[test]
fn null_turns_and_large_ids() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp_csv(
        &dir,
        "nulls.csv",
        "id,prompt,response_a,response_b\n\
         4294947231,\"[null]\",\"[null]\",\"[\"\"x\"\"]\"\n\
         5000000000,\"[\"\"q1\"\",\"\"q2\"\"]\",\"[\"\"a1\"\",null]\",\"[null,\"\"b2\"\"]\"\n",
    );
    let rows = ok_rows(&path);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].id, 4_294_947_231);
    assert_eq!(rows[0].prompt, vec![None]);
    assert_eq!(rows[0].response_a, vec![None]);
    assert_eq!(rows[1].id, 5_000_000_000);
    assert_eq!(rows[1].prompt, vec![s("q1"), s("q2")]);
    assert_eq!(rows[1].response_a, vec![s("a1"), None]);
    assert_eq!(rows[1].response_b, vec![None, s("b2")]);
}

#[test]
fn labels_are_one_hot() {
    assert_eq!(Label::A.one_hot(), [1.0, 0.0, 0.0]);
    assert_eq!(Label::B.one_hot(), [0.0, 1.0, 0.0]);
    assert_eq!(Label::Tie.one_hot(), [0.0, 0.0, 1.0]);
    assert_eq!(Label::from_one_hot([0.0, 0.0, 1.0]), Ok(Label::Tie));
    assert_eq!(Label::Tie.index(), 2);
    assert!(Label::from_one_hot([1.0, 1.0, 0.0]).is_err());
    assert!(Label::from_one_hot([0.0, 0.0, 0.0]).is_err());
    assert!(Label::from_one_hot([0.5, 0.5, 0.0]).is_err());
}

#[test]
fn missing_column_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_temp_csv(
        &dir,
        "broken_header.csv",
        "id,prompt,response_a\n1,\"[]\",\"[]\"\n",
    );
    let err = format!("{:#}", crate::data::read_arena_csv(&path).unwrap_err());
    assert!(err.contains("broken_header.csv"), "{err}");
    assert!(err.contains("response_b"), "{err}");

    // Only some of the label columns: the others are reported missing.
    let path = write_temp_csv(
        &dir,
        "half_labels.csv",
        "id,prompt,response_a,response_b,winner_model_a\n",
    );
    let err = format!("{:#}", crate::data::read_arena_csv(&path).unwrap_err());
    assert!(err.contains("half_labels.csv"), "{err}");
    assert!(
        err.contains("winner_model_b") && err.contains("winner_tie"),
        "{err}"
    );

    let missing = dir.path().join("nope.csv");
    let err = format!("{:#}", crate::data::read_arena_csv(&missing).unwrap_err());
    assert!(err.contains("nope.csv"), "{err}");
}

#[test]
fn malformed_rows_are_per_row_errors() {
    let dir = tempfile::tempdir().unwrap();
    let header = "id,model_a,model_b,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n";
    let good =
        |id: u64| format!("{id},m1,m2,\"[\"\"hi\"\"]\",\"[\"\"a\"\"]\",\"[\"\"b\"\"]\",0,1,0\n");
    let text = [
        header.to_string(),
        good(1),
        "2,m1,m2,\"[\"\"unterminated]\",\"[\"\"a\"\"]\",\"[\"\"b\"\"]\",0,1,0\n".to_string(),
        "x3,m1,m2,\"[\"\"hi\"\"]\",\"[\"\"a\"\"]\",\"[\"\"b\"\"]\",0,1,0\n".to_string(),
        "4,m1,m2,\"[\"\"hi\"\"]\"\n".to_string(),
        "5,m1,m2,\"[\"\"hi\"\"]\",\"[\"\"a\"\"]\",\"[\"\"b\"\"]\",1,1,0\n".to_string(),
        "6,m1,m2,\"{\"\"not\"\": 1}\",\"[\"\"a\"\"]\",\"[\"\"b\"\"]\",0,1,0\n".to_string(),
        good(7),
    ]
    .concat();
    let path = write_temp_csv(&dir, "bad_rows.csv", &text);
    let csv = crate::data::read_arena_csv(&path).unwrap();
    assert_eq!(csv.rows.len(), 7);
    assert_eq!(csv.n_ok(), 2);
    assert_eq!(csv.rows[0].as_ref().unwrap().id, 1);
    assert_eq!(csv.rows[6].as_ref().unwrap().id, 7);
    let errs: Vec<&crate::data::RowError> = csv.errors().collect();
    assert_eq!(
        errs.iter().map(|e| (e.row, e.id)).collect::<Vec<_>>(),
        vec![
            (2, Some(2)),
            (3, None),
            (4, Some(4)),
            (5, Some(5)),
            (6, Some(6))
        ]
    );
    for e in &errs {
        assert!(e.file.ends_with("bad_rows.csv"));
        let msg = e.to_string();
        assert!(
            msg.contains("bad_rows.csv") && msg.contains(&format!("row {}", e.row)),
            "{msg}"
        );
    }
    assert!(errs[0].reason.contains("prompt"), "{}", errs[0].reason);
    assert!(errs[1].reason.contains("id"), "{}", errs[1].reason);
    assert!(errs[3].reason.contains("one-hot"), "{}", errs[3].reason);
    // Line numbers count physical lines (header is line 1).
    assert_eq!(errs[0].line, 3);
}

#[test]
fn lone_surrogates_are_replaced() {
    use crate::data::replace_lone_surrogates as fix;
    // Lone high, lone low, high at the end, high followed by a non-surrogate escape.
    assert_eq!(fix(r#"["a\ud83db"]"#), r#"["a\ufffdb"]"#);
    assert_eq!(fix(r#"["\ude00"]"#), r#"["\ufffd"]"#);
    assert_eq!(fix(r#"["x\uD83D"]"#), r#"["x\ufffd"]"#);
    assert_eq!(fix(r#"["\ud83d\u0041"]"#), r#"["\ufffd\u0041"]"#);
    assert_eq!(
        fix(r#"["\ud83d\ud83d\ude00"]"#),
        r#"["\ufffd\ud83d\ude00"]"#
    );
    // Valid pairs and escaped backslashes are untouched (and borrowed).
    for ok in [
        r#"["\ud83d\ude00"]"#,
        r#"["\\ud83d"]"#,
        r#"["\\\\ud83d"]"#,
        r#"["plain ü €"]"#,
    ] {
        assert!(matches!(fix(ok), std::borrow::Cow::Borrowed(_)), "{ok}");
    }
    // `\\\ud83d` is an escaped backslash followed by a real lone surrogate.
    assert_eq!(fix(r#"["\\\ud83d"]"#), r#"["\\\ufffd"]"#);

    assert_eq!(
        crate::data::parse_turns(r#"["a\ud83db", null, "\ud83d\ude00"]"#).unwrap(),
        vec![s("a\u{FFFD}b"), None, s("\u{1F600}")]
    );
    // serde_json alone rejects it, so the replacement is what makes it parse.
    assert!(serde_json::from_str::<Vec<String>>(r#"["a\ud83db"]"#).is_err());

    let dir = tempfile::tempdir().unwrap();
    let path = write_temp_csv(
        &dir,
        "surrogate.csv",
        "id,prompt,response_a,response_b\n9,\"[\"\"hi \\ud83d\"\"]\",\"[\"\"\\ude4f ok\"\"]\",\"[\"\"b\"\"]\"\n",
    );
    let rows = ok_rows(&path);
    assert_eq!(rows[0].prompt, vec![s("hi \u{FFFD}")]);
    assert_eq!(rows[0].response_a, vec![s("\u{FFFD} ok")]);
}
