//! Ports, byte sizes and times as people write them (`8080`, `16MiB`,
//! `2026-12-06T12:00:00Z`), parsed with messages that say what is accepted; the command line
//! and the agent's API share them.

/// A TCP port from a number, with a message that says the valid range.
pub fn port(number: i64) -> Result<u16, String> {
    match u16::try_from(number) {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(format!("{number} is not a TCP port (1-65535)")),
    }
}

/// Parses a TCP port with a message that says the valid range.
pub fn parse_port(text: &str) -> Result<u16, String> {
    match text.trim().parse::<i64>() {
        Ok(number) => port(number),
        Err(_) => Err(format!("not a port number: {text:?}; use 1-65535")),
    }
}

/// Parses a byte size such as `4096`, `512KiB`, `16MiB`, `1GiB` (K/M/G are binary too).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("not a size: {text:?}; write e.g. 16MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?}; use KiB, MiB, GiB or TiB"
            ));
        }
    };
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {text} is too large"))
}

/// Parses an RFC 3339 time, in UTC (`2026-12-06T12:00:00Z`, fractions allowed) or with an
/// offset (`2026-12-06T13:00:00+01:00`).
pub fn parse_rfc3339(text: &str) -> Result<std::time::SystemTime, String> {
    let text = text.trim();
    let bad = || {
        format!(
            "not an RFC 3339 time: {text:?}; write e.g. 2026-12-06T12:00:00Z (UTC) or 2026-12-06T13:00:00+01:00"
        )
    };
    if let Some(utc) = text.strip_suffix(['Z', 'z']) {
        return humantime::parse_rfc3339_weak(utc).map_err(|_| bad());
    }
    // A trailing ±HH:MM offset: the UTC time is the local one minus the offset.
    let split = text
        .len()
        .checked_sub(6)
        .filter(|&i| text.is_char_boundary(i))
        .ok_or_else(bad)?;
    let (local, offset) = text.split_at(split);
    let sign = match offset.as_bytes().first() {
        Some(b'+') => 1i64,
        Some(b'-') => -1,
        _ => return Err(bad()),
    };
    let (hours, minutes) = offset[1..].split_once(':').ok_or_else(bad)?;
    let hours: u64 = hours.parse().map_err(|_| bad())?;
    let minutes: u64 = minutes.parse().map_err(|_| bad())?;
    if hours > 23 || minutes > 59 {
        return Err(bad());
    }
    let local = humantime::parse_rfc3339_weak(local).map_err(|_| bad())?;
    let shift = std::time::Duration::from_secs(hours * 3600 + minutes * 60);
    let utc = if sign > 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    };
    utc.ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse_in_utc_or_with_an_offset() {
        let utc = parse_rfc3339("2026-12-06T12:00:00Z").unwrap();
        assert_eq!(parse_rfc3339("2026-12-06T13:00:00+01:00"), Ok(utc));
        assert_eq!(parse_rfc3339("2026-12-06T09:30:00-02:30"), Ok(utc));
        let later = parse_rfc3339("2026-12-06T12:00:00.250Z").unwrap();
        assert_eq!(later.duration_since(utc).unwrap().as_millis(), 250);
        for bad in [
            "",
            "tomorrow",
            "2026-12-06T12:00:00",
            "2026-12-06T12:00:00+1:00",
            "2026-12-06T12:00:00+24:00",
        ] {
            assert!(
                parse_rfc3339(bad).unwrap_err().contains("RFC 3339"),
                "{bad}"
            );
        }
    }

    #[test]
    fn ports_outside_the_tcp_range_are_refused_with_the_range() {
        assert_eq!(parse_port("8080"), Ok(8080));
        assert_eq!(parse_port("65535"), Ok(65535));
        assert!(parse_port("0").unwrap_err().contains("1-65535"));
        assert!(parse_port("70000").unwrap_err().contains("1-65535"));
        assert!(parse_port("http").unwrap_err().contains("1-65535"));
    }

    #[test]
    fn sizes_accept_binary_units() {
        assert_eq!(parse_byte_size("4096"), Ok(4096));
        assert_eq!(parse_byte_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_byte_size("2k"), Ok(2048));
        assert_eq!(parse_byte_size("1TiB"), Ok(1 << 40));
        assert!(parse_byte_size("12 parsecs").is_err());
        assert!(parse_byte_size("99999999999999999999").is_err());
    }
}
