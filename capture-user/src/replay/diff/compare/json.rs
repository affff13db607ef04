//! The structural diff of two JSON bodies: objects by key, arrays index by index, one
//! difference per changed leaf, named by its path (`json:$.items[3].price`) so the same field
//! counts as one across requests.

use std::collections::BTreeSet;

use serde_json::Value;

use super::rules::{DiffRules, Step};
use super::{Comparison, MAX_VALUE_CHARS, cut_chars};
use crate::replay::diff::summary::{DiffKind, FieldClass};

/// `json:$.a['b c'][3]`: keys that are not identifiers are quoted as the rules accept them.
fn field_name(path: &[Step<'_>]) -> String {
    let mut name = String::from("json:$");
    for step in path {
        match step {
            Step::Index(i) => name.push_str(&format!("[{i}]")),
            Step::Key(k) => push_key(&mut name, k),
        }
    }
    name
}

/// Appends object key `key` to a JSON path: `.key`, or `['odd key']` (the report's body view
/// finds differing lines by the same spelling).
pub fn push_key(path: &mut String, key: &str) {
    if is_identifier(key) {
        path.push('.');
        path.push_str(key);
    } else {
        path.push_str("['");
        path.push_str(&key.replace('\\', "\\\\").replace('\'', "\\'"));
        path.push_str("']");
    }
}

fn is_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn render_json(value: &Value) -> String {
    cut_chars(&value.to_string(), MAX_VALUE_CHARS)
}

/// Numbers are equal when their values are (`1` and `1.0` are the same JSON number).
fn same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || ((x.is_f64() || y.is_f64()) && x.as_f64() == y.as_f64())
        }
        _ => a == b,
    }
}

fn same_type(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// Structural diff below `path`; serde_json's parser bounds the nesting, so recursion is safe.
pub(super) fn diff_json<'v>(
    old: &'v Value,
    new: &'v Value,
    path: &mut Vec<Step<'v>>,
    rules: &DiffRules,
    out: &mut Comparison,
) {
    if rules.path_ignored(path) {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for key in keys {
                path.push(Step::Key(key));
                diff_member(a.get(key.as_str()), b.get(key.as_str()), path, rules, out);
                path.pop();
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                path.push(Step::Index(i));
                diff_member(a.get(i), b.get(i), path, rules, out);
                path.pop();
            }
        }
        _ if !same_type(old, new) => {
            let values = (Some(render_json(old)), Some(render_json(new)));
            out.add(
                field_name(path),
                FieldClass::Body,
                DiffKind::TypeChanged,
                values,
            );
        }
        _ if !same_scalar(old, new) => {
            let values = (Some(render_json(old)), Some(render_json(new)));
            out.add(
                field_name(path),
                FieldClass::Body,
                DiffKind::Changed,
                values,
            );
        }
        _ => {}
    }
}

/// A member present on either side (or both) at `path`.
fn diff_member<'v>(
    old: Option<&'v Value>,
    new: Option<&'v Value>,
    path: &mut Vec<Step<'v>>,
    rules: &DiffRules,
    out: &mut Comparison,
) {
    match (old, new) {
        (Some(a), Some(b)) => diff_json(a, b, path, rules, out),
        (Some(a), None) if !rules.path_ignored(path) => {
            out.add(
                field_name(path),
                FieldClass::Body,
                DiffKind::Removed,
                (Some(render_json(a)), None),
            );
        }
        (None, Some(b)) if !rules.path_ignored(path) => {
            out.add(
                field_name(path),
                FieldClass::Body,
                DiffKind::Added,
                (None, Some(render_json(b))),
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::diff::compare::MAX_DIFFERENCES;
    use crate::replay::diff::compare::tests::{diff, fields};

    #[test]
    fn nested_change_added_removed_and_type_change_paths() {
        let old = r#"{"items":[{"id":1,"price":5},{"id":2,"price":7}],"meta":{"n":1,"gone":true},"t":"1"}"#;
        let new =
            r#"{"items":[{"id":1,"price":5},{"id":2,"price":8}],"meta":{"n":1,"new":null},"t":1}"#;
        let c = diff(old, new, &[]);
        assert_eq!(
            fields(&c),
            [
                ("json:$.items[1].price", DiffKind::Changed),
                ("json:$.meta.gone", DiffKind::Removed),
                ("json:$.meta.new", DiffKind::Added),
                ("json:$.t", DiffKind::TypeChanged),
            ]
        );
        assert_eq!(c.differences[0].recorded.as_deref(), Some("7"));
        assert_eq!(c.differences[1].replayed, None);
        assert_eq!(c.differences[3].recorded.as_deref(), Some("\"1\""));
    }

    #[test]
    fn array_growth_and_shrink_and_quoted_keys() {
        let c = diff(
            r#"{"a":[1,2],"b c":[1,2,3]}"#,
            r#"{"a":[1,2,{"x":1}],"b c":[1]}"#,
            &[],
        );
        assert_eq!(
            fields(&c),
            [
                ("json:$.a[2]", DiffKind::Added),
                ("json:$['b c'][1]", DiffKind::Removed),
                ("json:$['b c'][2]", DiffKind::Removed),
            ]
        );
        assert_eq!(c.differences[0].replayed.as_deref(), Some(r#"{"x":1}"#));
    }

    #[test]
    fn equal_numbers_in_other_notation_are_equal() {
        assert!(
            diff(r#"{"a":1}"#, r#"{"a":1.0}"#, &[])
                .differences
                .is_empty()
        );
    }

    #[test]
    fn ignore_rules_with_wildcards_cover_subtrees() {
        let old = r#"{"meta":{"at":1,"by":{"x":1}},"items":[{"ts":1,"v":1},{"ts":2,"v":2}],"a b":1,"q":{"k":1}}"#;
        let new = r#"{"meta":{"at":2,"by":{"x":2}},"items":[{"ts":3,"v":1},{"ts":4,"v":3}],"a b":2,"q":{"k":2}}"#;
        let c = diff(
            old,
            new,
            &[
                "json:$.meta",
                "json:$.items[*].ts",
                "json:$['a b']",
                "json:$.*.k",
            ],
        );
        assert_eq!(fields(&c), [("json:$.items[1].v", DiffKind::Changed)]);
        let c = diff(old, new, &["json:$.items[0]", "json:$.meta.by.x"]);
        assert_eq!(
            fields(&c),
            [
                ("json:$['a b']", DiffKind::Changed),
                ("json:$.items[1].ts", DiffKind::Changed),
                ("json:$.items[1].v", DiffKind::Changed),
                ("json:$.meta.at", DiffKind::Changed),
                ("json:$.q.k", DiffKind::Changed),
            ]
        );
        assert!(diff(old, new, &["json:$"]).differences.is_empty());
        assert!(
            diff(r#"{"x":{"a":1}}"#, r#"{"y":{"a":1}}"#, &["json:$.*"])
                .differences
                .is_empty()
        );
    }

    #[test]
    fn differences_are_capped_with_a_count() {
        let old: Vec<String> = (0..80).map(|i| format!("\"k{i}\":1")).collect();
        let new: Vec<String> = (0..80).map(|i| format!("\"k{i}\":2")).collect();
        let c = diff(
            &format!("{{{}}}", old.join(",")),
            &format!("{{{}}}", new.join(",")),
            &[],
        );
        assert_eq!((c.differences.len(), c.omitted), (MAX_DIFFERENCES, 30));
    }

    #[test]
    fn long_values_are_cut() {
        let long = "y".repeat(500);
        let c = diff(&format!(r#"{{"a":"{long}"}}"#), r#"{"a":"z"}"#, &[]);
        let shown = c.differences[0].recorded.clone().unwrap();
        assert_eq!(shown.chars().count(), MAX_VALUE_CHARS + 1);
        assert!(shown.ends_with('…'));
    }
}
