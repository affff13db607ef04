//! Values made into page text: HTML escaping (bodies, URIs and names are hostile input) and
//! the number formats the tables, cards and chart axes share.

/// Text made safe for HTML and SVG, in content and in attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A tick label with as many decimals as the step needs, "k" above ten thousand.
pub fn format_tick(value: f64, step: f64) -> String {
    if step >= 1000.0 && value.abs() >= 10_000.0 {
        return format!("{}k", format_tick(value / 1000.0, step / 1000.0));
    }
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()).clamp(0.0, 6.0) as usize
    };
    let text = format!("{value:.decimals$}");
    if text
        .trim_start_matches('-')
        .chars()
        .all(|c| c == '0' || c == '.')
    {
        "0".to_string()
    } else {
        text
    }
}

/// A value for a tooltip or bar label: three significant digits, no exponent.
pub fn format_value(value: f64) -> String {
    let decimals = match value.abs() {
        v if v >= 100.0 => 0,
        v if v >= 10.0 => 1,
        v if v >= 1.0 => 2,
        _ => 3,
    };
    format!("{value:.decimals$}")
}

/// Milliseconds for a table or card; "–" when nothing was measured.
pub fn ms(value: Option<f64>) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{} ms", format_value(v)),
        _ => "–".to_string(),
    }
}

/// `part` of `whole` in percent, "–" for an empty whole.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".to_string()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// "25,310": big counts read at a glance in cards and sentences (tables keep plain digits).
pub fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A number to print: NaN and infinities (an empty replay's rates) become 0.
pub fn finite_or_zero(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_have_the_decimals_the_step_needs() {
        assert_eq!(format_tick(20.0, 10.0), "20");
        assert_eq!(format_tick(0.4, 0.2), "0.4");
        assert_eq!(format_tick(0.05, 0.05), "0.05");
        assert_eq!(format_tick(20_000.0, 5000.0), "20k");
        assert_eq!(format_tick(-0.0, 0.1), "0");
        assert_eq!(format_value(1234.5), "1234");
        assert_eq!(format_value(12.34), "12.3");
    }

    #[test]
    fn escaping_covers_the_five_characters() {
        assert_eq!(
            escape(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn counts_are_grouped_and_empty_values_are_dashes() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(25_310), "25,310");
        assert_eq!(grouped(1_234_567), "1,234,567");
        assert_eq!(ms(None), "–");
        assert_eq!(ms(Some(f64::NAN)), "–");
        assert_eq!(ms(Some(9.1)), "9.10 ms");
        assert_eq!(percent(1, 0), "–");
        assert_eq!(percent(1, 8), "12.5%");
        assert_eq!(finite_or_zero(f64::INFINITY), 0.0);
    }
}
