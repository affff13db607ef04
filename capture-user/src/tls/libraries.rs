//! Finding the TLS libraries the node's processes use: every `libssl.so*` mapped in
//! `/proc/PID/maps` (through `/proc/PID/root` for processes in containers), plus the host's
//! own in the usual library directories, so a process that starts later with them is
//! covered from its first call. Also which processes serve a configured port without any
//! such library (statically linked TLS, which the probes cannot see), so capture can say so.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Library directories searched on the host at start.
const HOST_LIBRARY_DIRS: [&str; 6] = [
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib/aarch64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
];

/// A library file, the same whatever path reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// A TLS library to probe: a path this process can open to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsLibrary {
    pub id: FileId,
    pub path: PathBuf,
}

/// True for a file name of OpenSSL's libssl (`libssl.so.3`, `libssl.so.1.1`), also as
/// Python wheels bundle it (auditwheel renames it `libssl-8bd944e8.so.3`).
pub fn is_libssl(name: &str) -> bool {
    if name.starts_with("libssl.so") {
        return true;
    }
    let Some(rest) = name.strip_prefix("libssl-") else {
        return false;
    };
    let hash = rest.split('.').next().unwrap_or_default();
    !hash.is_empty()
        && hash.bytes().all(|b| b.is_ascii_alphanumeric())
        && rest[hash.len()..].starts_with(".so")
}

/// The libssl paths a maps file names (deleted files left out: a library replaced on disk
/// cannot be reopened by path).
pub fn libssl_paths(maps: &str) -> BTreeSet<&str> {
    maps.lines()
        .filter_map(|line| {
            // address perms offset dev inode path: the path is the sixth field on.
            let path = line.splitn(6, ' ').nth(5)?.trim_start();
            let name = path.rsplit('/').next()?;
            (path.starts_with('/') && is_libssl(name) && !path.ends_with(" (deleted)"))
                .then_some(path)
        })
        .collect()
}

fn file_id(path: &Path) -> Option<FileId> {
    let meta = std::fs::metadata(path).ok()?;
    meta.is_file().then(|| FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// The host's own libssl files.
pub fn host_libraries() -> Vec<TlsLibrary> {
    let mut found = BTreeMap::new();
    for dir in HOST_LIBRARY_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !is_libssl(&name.to_string_lossy()) {
                continue;
            }
            // The file itself, not the `libssl.so` development symlink to it.
            let path = std::fs::canonicalize(entry.path()).unwrap_or_else(|_| entry.path());
            if let Some(id) = file_id(&path) {
                found.entry(id).or_insert(path);
            }
        }
    }
    found
        .into_iter()
        .map(|(id, path)| TlsLibrary { id, path })
        .collect()
}

/// Process ids now.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The program process `pid` runs (its `/proc/PID/exe`), or nothing for a kernel thread or
/// a process that is gone; it changes when the process execs.
pub fn executable(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// The libssl files process `pid` maps, reached through its root (its container's
/// filesystem), or nothing when the process is gone.
pub fn process_libraries(pid: u32) -> Vec<TlsLibrary> {
    let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return Vec::new();
    };
    libssl_paths(&maps)
        .into_iter()
        .filter_map(|path| {
            let through_root = PathBuf::from(format!("/proc/{pid}/root{path}"));
            let id = file_id(&through_root)?;
            // The plain path when it is the same file (the process shares our root).
            let path = match file_id(Path::new(path)) {
                Some(same) if same == id => PathBuf::from(path),
                _ => through_root,
            };
            Some(TlsLibrary { id, path })
        })
        .collect()
}

/// A process serving a configured port that maps no libssl: its TLS, if any, is out of
/// the probes' sight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unhooked {
    pub pid: u32,
    pub command: String,
    pub port: u16,
}

/// Socket inodes listening on `ports` in a `/proc/net/tcp{,6}` table, with their port.
pub fn listening_inodes(table: &str, ports: &[u16]) -> Vec<(u64, u16)> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retr uid timeout inode
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode = fields.get(9)?.parse().ok()?;
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            (*state == "0A" && ports.contains(&port)).then_some((inode, port))
        })
        .collect()
}

/// The port process `pid` serves: that of the first of `listening` among its open
/// descriptors (a process that forked from a server holds its listening socket too).
pub fn port_served(pid: u32, listening: &BTreeMap<u64, u16>) -> Option<u16> {
    if listening.is_empty() {
        return None;
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    fds.flatten().find_map(|fd| {
        let link = std::fs::read_link(fd.path()).ok()?;
        let inode = link
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        listening.get(&inode).copied()
    })
}

/// What process `pid` runs, as `/proc/PID/comm` names it ("" when gone).
pub fn command(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_default()
}

/// Which of `pids` hold one of the `listening` sockets but map no libssl (`with_tls`: pids
/// known to map one).
pub fn unhooked_servers(
    pids: &[u32],
    listening: &BTreeMap<u64, u16>,
    with_tls: &HashSet<u32>,
) -> Vec<Unhooked> {
    pids.iter()
        .copied()
        .filter(|pid| !with_tls.contains(pid))
        .filter_map(|pid| {
            let port = port_served(pid, listening)?;
            Some(Unhooked {
                pid,
                command: command(pid),
                port,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libssl_mappings_are_found_by_name_and_deleted_ones_left_out() {
        let maps = "\
7f00-7f01 r--p 00000000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f01-7f02 r-xp 00001000 fd:01 1234 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f02-7f03 r-xp 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f03-7f04 r-xp 00000000 fd:01 98 /opt/app/lib/libssl.so.1.1
7f04-7f05 r-xp 00000000 fd:01 97 /old/libssl.so.3 (deleted)
7f05-7f06 r-xp 00000000 fd:01 96 /venv/site-packages/psycopg2_binary.libs/libssl-8bd944e8.so.3
7f06-7f07 r-xp 00000000 fd:01 95 /opt/libssl-dev/libsslx.so
7f07-7f08 r-xp 00000000 fd:01 94 /opt/libssl-utils.txt
7f05-7f06 rw-p 00000000 00:00 0 
7ffd-7ffe rw-p 00000000 00:00 0                          [stack]
";
        let paths: Vec<&str> = libssl_paths(maps).into_iter().collect();
        assert_eq!(
            paths,
            [
                "/opt/app/lib/libssl.so.1.1",
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/venv/site-packages/psycopg2_binary.libs/libssl-8bd944e8.so.3",
            ]
        );
    }

    #[test]
    fn listening_sockets_on_the_ports_are_picked_from_the_tcp_table() {
        let table = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:20FB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1
   1: 0100007F:20FB 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1
";
        assert_eq!(listening_inodes(table, &[8443]), [(4242, 8443)]);
        assert_eq!(
            listening_inodes(table, &[80, 8443]),
            [(4242, 8443), (4444, 80)]
        );
    }

    #[test]
    fn this_hosts_libssl_is_found() {
        // Debian's curl, nginx and wrk link it; setup installs them.
        let host = host_libraries();
        assert!(
            host.iter()
                .any(|l| l.path.to_string_lossy().contains("libssl.so.3")),
            "{host:?}"
        );
    }
}
