//! The replay target as the user names it (`http://HOST[:PORT]` or `https://HOST[:PORT]`),
//! parsed strictly: a replay sends only where it is told, and a path is refused with what to
//! do instead.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};

/// How the target is spoken to: the recorded bytes as they are over TCP, or inside a TLS
/// session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    /// "http" or "https", as in the URL.
    pub fn name(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The port a URL without one means.
    fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

/// An http:// or https:// target, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    pub host: String,
    pub port: u16,
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;

    fn from_str(url: &str) -> anyhow::Result<Self> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
            (Scheme::Http, rest)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (Scheme::Https, rest)
        } else {
            bail!("--target must look like http://HOST[:PORT] or https://HOST[:PORT], got {url:?}");
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            bail!(
                "--target must look like {}://HOST[:PORT] without a path (use --rewrite-url to change paths), got {url:?}",
                scheme.name()
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
            _ => (authority, scheme.default_port()),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            bail!("--target {url}: no host");
        }
        Ok(Self {
            scheme,
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Target {
    /// The target as a URL, an IPv6 literal in brackets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.scheme.name();
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

impl Target {
    /// True for https: the requests go inside a TLS session.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::Https
    }

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
        assert_eq!(t.scheme, Scheme::Http);
        let t: Target = "http://staging/".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("staging", 80));
        let t: Target = "http://[::1]:9000".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9000));
        assert_eq!(t.to_string(), "http://[::1]:9000");
        for (bad, says) in [
            ("ftp://x", "https://HOST"),
            ("x:80", "http://HOST"),
            ("http://x/api", "without a path"),
            ("https://x/api", "https://HOST[:PORT] without a path"),
            ("http://x:0", "1-65535"),
            ("https://x:99999", "1-65535"),
            ("http://", "http://HOST"),
        ] {
            let err = bad.parse::<Target>().unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn https_targets_know_their_scheme_and_default_to_port_443() {
        let t: Target = "https://api.example".parse().unwrap();
        assert_eq!(
            (t.scheme, t.host.as_str(), t.port),
            (Scheme::Https, "api.example", 443)
        );
        assert!(t.is_tls());
        assert_eq!(t.to_string(), "https://api.example:443");
        let t: Target = "https://10.0.0.2:8443/".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("10.0.0.2", 8443));
        let t: Target = "https://[fd00::2]".parse().unwrap();
        assert_eq!((t.host.as_str(), t.port), ("fd00::2", 443));
    }
}
