//! The two bodies of a diff example side by side, with the lines that differ marked: for JSON,
//! the lines of each differing path (and of everything under it); for other bodies, the line
//! holding the first differing byte, with that character marked.
//!
//! Bodies arrive pretty-printed (serde_json's two-space style) and maybe cut at 4 KiB, so the
//! JSON is not parsed as a whole: a tolerant line scanner gives each line its JSON path and gives
//! up, from that line on, where the text stops looking like pretty JSON.

use std::fmt::Write as _;

use crate::replay::diff::compare::push_key;
use crate::replay::diff::{Difference, Example};
use crate::replay::html::text::escape;

/// How a line is marked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mark {
    None,
    /// Part of a difference that counts.
    Diff,
    /// Part of a difference found to be noise only.
    Noise,
}

impl Mark {
    fn class(self) -> &'static str {
        match self {
            Mark::None => "l",
            Mark::Diff => "l diff",
            Mark::Noise => "l noise-diff",
        }
    }
}

/// Both bodies of `example`, recorded on the left, replayed on the right.
pub fn body_panes(example: &Example) -> String {
    let mut out = String::from("<div class=\"bodies\">");
    let sides = [
        ("recorded", example.recorded_status, &example.recorded_body),
        ("replayed", example.replayed_status, &example.replayed_body),
    ];
    for (side, status, body) in sides {
        let _ = write!(
            out,
            "<div class=\"pane {side}\"><div class=\"pane-head\">{side} · status {status}</div>{}\
             </div>",
            body_view(body, &example.differences)
        );
    }
    out.push_str("</div>");
    if example.bodies_cut {
        out.push_str("<p class=\"note\">Bodies cut at 4 KiB.</p>");
    }
    out
}

/// One body as a `<pre>` of lines, each marked if a difference touches it.
fn body_view(body: &str, differences: &[Difference]) -> String {
    if body.is_empty() {
        return "<pre class=\"body empty\">(empty body)</pre>".to_string();
    }
    let paths = json_line_paths(body);
    let offset = differences
        .iter()
        .find(|d| d.field == "body")
        .and_then(|d| Some((d.offset?, d.noise)));
    let mut out = String::from("<pre class=\"body\">");
    let mut line_start = 0usize;
    for (i, line) in body.split('\n').enumerate() {
        let line_end = line_start + line.len();
        let mut mark = paths
            .get(i)
            .and_then(Option::as_deref)
            .map_or(Mark::None, |path| json_mark(path, differences));
        let mut text = escape(line);
        if let Some((at, noise)) = offset {
            let at = usize::try_from(at).unwrap_or(usize::MAX);
            if (line_start..=line_end).contains(&at) && at <= body.len() {
                mark = if noise { Mark::Noise } else { Mark::Diff };
                text = mark_at(line, at - line_start);
            }
        }
        // No newline between lines: each is a block, and a newline would add an empty line.
        let _ = write!(out, "<span class=\"{}\">{text}</span>", mark.class());
        line_start = line_end + 1;
    }
    out.push_str("</pre>");
    out
}

/// The line with the character at byte `at` wrapped in `<mark>` (at its end: an empty mark).
fn mark_at(line: &str, at: usize) -> String {
    let mut cut = at.min(line.len());
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    let rest = &line[cut..];
    let next = rest.chars().next().map_or(0, char::len_utf8);
    format!(
        "{}<mark class=\"at\">{}</mark>{}",
        escape(&line[..cut]),
        escape(&rest[..next]),
        escape(&rest[next..])
    )
}

/// How the JSON differences mark a line whose path is `path`: a line is touched by a
/// difference at its path or at any container holding it.
fn json_mark(path: &str, differences: &[Difference]) -> Mark {
    let mut mark = Mark::None;
    for d in differences {
        let Some(diff_path) = d.field.strip_prefix("json:") else {
            continue;
        };
        if covers(diff_path, path) {
            if !d.noise {
                return Mark::Diff;
            }
            mark = Mark::Noise;
        }
    }
    mark
}

/// `outer` is `inner` or one of the containers holding it (`$.a` covers `$.a.b` and `$.a[0]`,
/// not `$.ab`).
fn covers(outer: &str, inner: &str) -> bool {
    inner
        .strip_prefix(outer)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// An open object or array while scanning, with its path.
enum Open {
    Object(String),
    Array(String, usize),
}

/// The JSON path of each line of a pretty-printed JSON text: `$` for the top value, `.key` or
/// `["odd key"]` for members, `[i]` for array items; a closing bracket has its container's
/// path. None for every line from the first that does not look like pretty JSON (all of them
/// when the body is not JSON).
fn json_line_paths(body: &str) -> Vec<Option<String>> {
    let mut stack: Vec<Open> = Vec::new();
    let mut paths = Vec::new();
    let looks_like_json = body.trim_start().starts_with(['{', '[']);
    let mut ok = looks_like_json;
    for line in body.split('\n') {
        let path = if ok {
            line_path(line.trim(), &mut stack)
        } else {
            None
        };
        ok = path.is_some();
        paths.push(path);
    }
    paths
}

/// One line's path, updating the open containers.
fn line_path(line: &str, stack: &mut Vec<Open>) -> Option<String> {
    if line.starts_with(['}', ']']) {
        return match stack.pop() {
            Some(Open::Object(p) | Open::Array(p, _)) => Some(p),
            None => None,
        };
    }
    let (path, value) = match stack.last_mut() {
        None => ("$".to_string(), line),
        Some(Open::Array(parent, next)) => {
            let path = format!("{parent}[{next}]");
            *next += 1;
            (path, line)
        }
        Some(Open::Object(parent)) => {
            let (key, value) = split_member(line)?;
            (child_path(parent, &key), value)
        }
    };
    match value.trim_end_matches(',') {
        "{" => stack.push(Open::Object(path.clone())),
        "[" => stack.push(Open::Array(path.clone(), 0)),
        _ => {}
    }
    Some(path)
}

/// `"key": value` into the decoded key and the value's text.
fn split_member(line: &str) -> Option<(String, &str)> {
    let body = line.strip_prefix('"')?;
    let mut escaped = false;
    let end = body.char_indices().find_map(|(i, c)| {
        let close = c == '"' && !escaped;
        escaped = c == '\\' && !escaped;
        close.then_some(i)
    })?;
    let key: String = serde_json::from_str(&line[..end + 2]).ok()?;
    let value = line[end + 2..].trim_start().strip_prefix(':')?.trim_start();
    Some((key, value))
}

/// The path of member `key` of the object at `parent`, spelled as the differ spells it
/// ("json:$.items[3].price", `['odd key']`).
fn child_path(parent: &str, key: &str) -> String {
    let mut path = parent.to_string();
    push_key(&mut path, key);
    path
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::diff::{DiffKind, FieldClass};

    fn diff(field: &str, noise: bool, offset: Option<u64>) -> Difference {
        Difference {
            field: field.to_string(),
            class: FieldClass::Body,
            kind: DiffKind::Changed,
            recorded: None,
            replayed: None,
            offset,
            noise,
        }
    }

    #[test]
    fn lines_get_their_json_paths() {
        let body = serde_json::to_string_pretty(&serde_json::json!({
            "id": 1,
            "items": [{"price": 3}, []],
            "odd key": {},
        }))
        .unwrap_or_default();
        let paths: Vec<String> = json_line_paths(&body).into_iter().flatten().collect();
        assert_eq!(
            paths,
            [
                "$",
                "$.id",
                "$.items",
                "$.items[0]",
                "$.items[0].price",
                "$.items[0]",
                "$.items[1]",
                "$.items",
                "$['odd key']",
                "$"
            ]
        );
        assert!(json_line_paths("plain text").iter().all(Option::is_none));
        // Cut mid-way: lines after the break have no path.
        let cut = json_line_paths("{\n  \"a\": 1,\n  \"b\": \"tr");
        assert_eq!(
            cut,
            [Some("$".into()), Some("$.a".into()), Some("$.b".into())]
        );
    }

    #[test]
    fn differing_paths_mark_their_lines_and_noise_is_told_apart() {
        let body = "{\n  \"items\": [\n    1\n  ],\n  \"itemsx\": 2,\n  \"ts\": 5\n}";
        let diffs = [
            diff("json:$.items", false, None),
            diff("json:$.ts", true, None),
        ];
        let html = body_view(body, &diffs);
        assert_eq!(html.matches("class=\"l diff\"").count(), 3, "{html}");
        assert_eq!(html.matches("class=\"l noise-diff\"").count(), 1, "{html}");
        assert!(
            html.contains("<span class=\"l\">  &quot;itemsx&quot;: 2,</span>"),
            "{html}"
        );
    }

    #[test]
    fn a_text_body_marks_the_first_differing_offset() {
        let html = body_view("line one\nline <two>", &[diff("body", false, Some(14))]);
        assert!(
            html.contains(
                "<span class=\"l diff\">line <mark class=\"at\">&lt;</mark>two&gt;</span>"
            ),
            "{html}"
        );
        // An offset past the end marks nothing and does not panic.
        let html = body_view("é", &[diff("body", false, Some(99))]);
        assert!(!html.contains("mark"));
        assert_eq!(mark_at("é", 1), "<mark class=\"at\">é</mark>");
    }

    #[test]
    fn hostile_bodies_stay_text() {
        let html = body_view("</details><script>alert('x')</script>", &[]);
        assert!(!html.contains("<script>") && !html.contains("</details>"));
        assert!(html.contains("&lt;/details&gt;&lt;script&gt;alert(&#39;x&#39;)"));
    }
}
