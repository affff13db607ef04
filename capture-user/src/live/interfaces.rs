//! Which interfaces a capture attaches to. On a Kubernetes node a service's traffic crosses one
//! veth per pod (`cali*`, `veth*`, `lxc*`), and pods come and go, so `--iface` takes patterns:
//! exact names, shell-style globs, and `any` (every interface but `lo`, unless `lo` is named
//! too). Exact names must exist when capture starts (a typo fails at once); patterns may match
//! nothing yet, and the links watcher (`links`) attaches to what matches later.

use std::path::Path;

use super::loader::LoaderError;

/// One `--iface` value.
#[derive(Clone, Debug)]
enum Pattern {
    /// Every interface except `lo`.
    Any,
    Exact(String),
    Glob(glob::Pattern),
}

/// The `--iface` values of one capture.
#[derive(Clone, Debug)]
pub struct InterfacePatterns {
    patterns: Vec<Pattern>,
}

impl InterfacePatterns {
    /// Reads `--iface` values: `any`, a glob (`*`, `?`, `[...]`), or a name.
    pub fn parse(given: &[String]) -> Result<Self, LoaderError> {
        if given.is_empty() {
            return Err(LoaderError::NoInterface);
        }
        let patterns = given
            .iter()
            .map(|g| {
                if g == "any" {
                    Ok(Pattern::Any)
                } else if g.contains(['*', '?', '[']) {
                    glob::Pattern::new(g).map(Pattern::Glob).map_err(|e| {
                        LoaderError::BadInterfacePattern {
                            pattern: g.clone(),
                            reason: e.msg.to_string(),
                        }
                    })
                } else if g.is_empty() || g.contains('/') {
                    Err(LoaderError::InterfaceNotFound(g.clone()))
                } else {
                    Ok(Pattern::Exact(g.clone()))
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    /// True when some value is a glob or `any`: links that appear later may match.
    pub fn follows_new_links(&self) -> bool {
        self.patterns
            .iter()
            .any(|p| !matches!(p, Pattern::Exact(_)))
    }

    /// The names given exactly (they must exist).
    pub fn exact_names(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().filter_map(|p| match p {
            Pattern::Exact(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Whether interface `name` is wanted.
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::Any => name != "lo",
            Pattern::Exact(exact) => exact == name,
            Pattern::Glob(glob) => glob.matches(name),
        })
    }

    /// Whether `name` was asked for by its exact name (an unsupported link type is then an
    /// error, not a skip).
    pub fn names_exactly(&self, name: &str) -> bool {
        self.exact_names().any(|n| n == name)
    }
}

/// The interfaces of this network namespace, sorted.
pub fn present_interfaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Checks that `iface` exists and hands the hooks an Ethernet header.
pub fn check_link(iface: &str) -> Result<(), LoaderError> {
    let dir = Path::new("/sys/class/net").join(iface);
    if iface.is_empty() || iface.contains('/') || !dir.exists() {
        return Err(LoaderError::InterfaceNotFound(iface.to_string()));
    }
    // ARPHRD_ETHER = 1, ARPHRD_LOOPBACK = 772: both hand the hooks an Ethernet header.
    let link_type = std::fs::read_to_string(dir.join("type")).unwrap_or_default();
    let link_type = link_type.trim();
    if link_type != "1" && link_type != "772" {
        return Err(LoaderError::UnsupportedLinkType {
            name: iface.to_string(),
            link_type: link_type.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patterns(given: &[&str]) -> InterfacePatterns {
        InterfacePatterns::parse(&given.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn names_globs_and_any_match_what_they_say() {
        let p = patterns(&["eth0", "veth*", "cali????"]);
        for (name, want) in [
            ("eth0", true),
            ("eth1", false),
            ("veth9a", true),
            ("vethp1", true),
            ("cali1234", true),
            ("cali12345", false),
            ("lo", false),
        ] {
            assert_eq!(p.matches(name), want, "{name}");
        }
        assert!(p.follows_new_links());
        assert_eq!(p.exact_names().collect::<Vec<_>>(), ["eth0"]);
        assert!(p.names_exactly("eth0") && !p.names_exactly("veth9a"));

        let any = patterns(&["any"]);
        assert!(any.matches("eth0") && any.matches("lxc42") && !any.matches("lo"));
        let any_and_lo = patterns(&["any", "lo"]);
        assert!(any_and_lo.matches("lo"));
        assert!(!patterns(&["eth0"]).follows_new_links());
    }

    #[test]
    fn bad_values_are_refused_with_the_value_named() {
        let err = InterfacePatterns::parse(&["veth[".to_string()]).unwrap_err();
        assert!(err.to_string().contains("veth["), "{err}");
        assert!(matches!(
            InterfacePatterns::parse(&[]),
            Err(LoaderError::NoInterface)
        ));
        assert!(matches!(
            InterfacePatterns::parse(&["a/b".to_string()]),
            Err(LoaderError::InterfaceNotFound(_))
        ));
    }

    #[test]
    fn loopback_is_a_supported_link_and_missing_ones_are_named() {
        assert!(check_link("lo").is_ok());
        assert!(matches!(
            check_link("nope-nope0"),
            Err(LoaderError::InterfaceNotFound(name)) if name == "nope-nope0"
        ));
    }
}
