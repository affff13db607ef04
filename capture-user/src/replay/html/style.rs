//! The report page's style sheet, inlined in the page so it needs no fetch. System fonts only.

/// The page's CSS: light, dense tables with tabular numbers, charts as wide as the page, the two
/// bodies of an example side by side with differing lines tinted.
pub const CSS: &str = r#"
:root { --fg:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --card:#fff;
  --bad:#b91c1c; --bad-bg:#fee2e2; --warn:#b45309; --warn-bg:#fef3c7; --good:#15803d;
  --mono: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width:1240px; margin:0 auto; padding:24px 20px 40px; }
h1 { font-size:22px; margin:0 0 6px; }
h2 { font-size:17px; margin:0 0 8px; }
h3 { font-size:15px; margin:18px 0 8px; } h3 code { font-size:14px; }
h4 { font-size:13px; margin:12px 0 6px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
code { font-family:var(--mono); font-size:12.5px; }
section { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:16px 18px; margin:16px 0; }
.meta { display:grid; grid-template-columns:max-content 1fr; gap:2px 12px; margin:0; color:var(--muted); }
.meta dt { font-weight:600; } .meta dd { margin:0; color:var(--fg); word-break:break-all; }
.banner { padding:8px 12px; border-radius:6px; margin:12px 0 0; }
.banner.warn { background:var(--warn-bg); color:var(--warn); }
.banner.bad { background:var(--bad-bg); color:var(--bad); }
.note, .empty { color:var(--muted); margin:0 0 8px; }
.failure-detail { color:var(--muted); font-size:12px; max-width:36em; overflow-wrap:anywhere; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(180px, 1fr)); gap:10px; }
.card { border:1px solid var(--line); border-radius:6px; padding:10px 12px; }
.card .label { color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.04em; }
.card .value { font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }
.card .detail { color:var(--muted); font-size:12px; }
.card.bad .value { color:var(--bad); } .card.warn .value { color:var(--warn); } .card.good .value { color:var(--good); }
svg.chart { display:block; width:100%; height:auto; font-size:13px; }
svg.chart text { fill:#4b5563; }
svg.chart .unit { font-weight:600; fill:#374151; }
svg.chart .empty { fill:var(--muted); font-size:15px; }
svg.chart .grid { stroke:#eef0f3; } svg.chart .baseline, svg.chart .tick { stroke:#9ca3af; }
svg.chart polyline { stroke-width:2; stroke-linejoin:round; }
svg.chart .hover { fill-opacity:0; stroke:none; }
svg.chart .hover:hover { fill-opacity:1; }
svg.chart .label { fill:var(--fg); font-family:var(--mono); font-size:13px; }
svg.chart .value { font-size:11px; }
.tables { display:grid; grid-template-columns:2fr 1fr 1fr; gap:18px; align-items:start; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { padding:5px 8px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { font-size:12px; color:var(--muted); font-weight:600; white-space:nowrap; }
th.group { text-align:center; border-bottom:1px solid #d1d5db; }
.num { text-align:right; white-space:nowrap; }
td.bad { color:var(--bad); font-weight:600; } td.warn { color:var(--warn); font-weight:600; }
tbody tr:nth-child(even) { background:#fafafa; }
td.bar { width:40%; } .fill { display:block; height:10px; border-radius:3px; min-width:2px; }
.pill { display:inline-block; padding:0 7px; border-radius:9px; font-weight:600; font-size:12px; }
.s1 { background:#e5e7eb; } .s2 { background:#bbf7d0; color:#14532d; } .s3 { background:#bfdbfe; color:#1e3a8a; }
.s4 { background:#fde68a; color:#78350f; } .s5 { background:#fecaca; color:#7f1d1d; }
.scroll { overflow-x:auto; }
td.endpoint a { color:inherit; text-decoration:none; } td.endpoint a:hover { text-decoration:underline; }
article.endpoint { border-top:1px solid var(--line); margin-top:18px; }
ul.fields, ul.differences { margin:0; padding-left:18px; }
li.field, li.noise { margin:2px 0; }
li.noise, li.noise code { color:var(--muted); }
li .count, li .ids { color:var(--muted); font-size:12px; }
.differences .was code { background:var(--bad-bg); } .differences .now code { background:#dcfce7; }
.differences li.noise code { background:#f3f4f6; }
details.example { border:1px solid var(--line); border-radius:6px; margin:8px 0; background:#fff; }
details.example > summary { cursor:pointer; padding:7px 10px; list-style-position:inside; }
details.example[open] > summary { border-bottom:1px solid var(--line); background:#f9fafb; }
details.example > ul { margin:8px 10px; }
.rid { color:var(--muted); font-variant-numeric:tabular-nums; }
.bodies { display:grid; grid-template-columns:1fr 1fr; gap:10px; margin:8px 10px 10px; }
.pane { min-width:0; border:1px solid var(--line); border-radius:4px; }
.pane-head { font-size:12px; font-weight:600; color:var(--muted); padding:4px 8px; border-bottom:1px solid var(--line); background:#f9fafb; }
pre.body { margin:0; padding:6px 0; max-height:420px; overflow:auto; font:12px/1.5 var(--mono); counter-reset:ln; }
pre.body .l { display:block; padding:0 8px 0 44px; position:relative; white-space:pre-wrap; word-break:break-all; }
pre.body .l::before { counter-increment:ln; content:counter(ln); position:absolute; left:0; width:34px; text-align:right; color:#9ca3af; }
pre.body .diff { background:var(--bad-bg); box-shadow:inset 3px 0 var(--bad); }
pre.body .noise-diff { background:#f3f4f6; box-shadow:inset 3px 0 #9ca3af; }
pre.body mark.at { background:#fca5a5; outline:1px solid var(--bad); }
pre.body.empty { padding:8px; color:var(--muted); }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:20px; }
@media (max-width: 900px) { .tables, .bodies { grid-template-columns:1fr; } }
"#;
