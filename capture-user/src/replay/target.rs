//! The replay target as the user names it (`http://HOST[:PORT]`), parsed strictly: a replay
//! sends only where it is told, and a path or https is refused with what to do instead.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};

/// An http:// target, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            if url.starts_with("https://") {
                bail!("--target {url}: https is not supported; replay to an http:// endpoint");
            }
            bail!("--target must look like http://HOST[:PORT], got {url:?}");
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            bail!(
                "--target must look like http://HOST[:PORT] without a path (use --rewrite-url to change paths), got {url:?}"
            );
        }
        let (host, port) = match authority.rsplit_once(':') {
            // An IPv6 literal in brackets has colons of its own.
            Some((host, port)) if !port.contains(']') => {
                let port: u16 = port
                    .parse()
                    .ok()
                    .filter(|p| *p > 0)
                    .with_context(|| format!("--target {url}: port must be 1-65535"))?;
                (host, port)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("--target {url}: no host");
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl Target {
    /// The first address the host resolves to.
    pub async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .with_context(|| format!("cannot resolve target host {}", self.host))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_clear_errors() {
        let t: Target = "http://10.0.0.2:8080".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.2", 8080));
        let t: Target = "http://staging/".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("staging", 80));
        let t: Target = "http://[::1]:9000".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        for (bad, says) in [
            ("https://x", "https is not supported"),
            ("x:80", "http://HOST"),
            ("http://x/api", "without a path"),
            ("http://x:0", "1-65535"),
            ("http://x:99999", "1-65535"),
            ("http://", "http://HOST"),
        ] {
            let err = bad.parse::<Target>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
