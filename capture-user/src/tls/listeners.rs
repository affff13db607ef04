//! Which sockets listen on the configured ports, in every network namespace of the node, for
//! `--tls-scope servers`, which asks every second. `/proc/PID/net/tcp` answers too, but
//! reading it walks the whole established-connection hash table (262,144 buckets on a small
//! VM, about 3.5 ms per table), once per namespace: a node with a hundred pods would spend
//! most of a core on it. sock_diag asked for listening sockets only walks the listening
//! table. One netlink socket per namespace, opened inside it (`setns` on this thread, then
//! back) and kept while the namespace has processes; the `/proc` table is the fallback when
//! sock_diag cannot be used.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::AsRawFd;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};

use super::libraries::listening_inodes;

/// Finds listening sockets node-wide, keeping a sock_diag socket per network namespace.
pub struct ListenerScan {
    /// This process's own namespace, to return to after opening a socket in another.
    home: Option<File>,
    /// Per namespace (`net:[INODE]`), its sock_diag socket, or `None` where it could not be
    /// opened (the `/proc` table is read there instead).
    sockets: HashMap<String, Option<Socket>>,
}

impl ListenerScan {
    /// A scan with no socket open yet.
    pub fn new() -> Self {
        Self {
            home: File::open("/proc/thread-self/ns/net").ok(),
            sockets: HashMap::new(),
        }
    }

    /// Sockets listening on `ports` in the namespaces of `pids` (every process of the
    /// node), by inode, with their port. Sockets of namespaces no process is in any more
    /// are closed (they would keep the namespace alive).
    pub fn listening(&mut self, pids: &[u32], ports: &[u16]) -> BTreeMap<u64, u16> {
        let mut namespaces: HashMap<String, u32> = HashMap::new();
        for &pid in pids {
            if let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) {
                namespaces
                    .entry(ns.to_string_lossy().into_owned())
                    .or_insert(pid);
            }
        }
        self.sockets.retain(|ns, _| namespaces.contains_key(ns));
        let mut listening = BTreeMap::new();
        for (ns, pid) in namespaces {
            if !self.sockets.contains_key(&ns) {
                let socket = self.open_in(pid);
                if let Err(e) = &socket {
                    log::debug!("sock_diag in the namespace of pid {pid}: {e}; reading /proc");
                }
                self.sockets.insert(ns.clone(), socket.ok());
            }
            let answered = match self.sockets.get(&ns) {
                Some(Some(socket)) => [AF_INET, AF_INET6]
                    .into_iter()
                    .map(|family| listening_in(socket, family, ports))
                    .collect::<std::io::Result<Vec<_>>>()
                    .map(|found| listening.extend(found.into_iter().flatten())),
                _ => Err(std::io::Error::other("no sock_diag socket")),
            };
            if answered.is_err() {
                for table in ["tcp", "tcp6"] {
                    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
                        listening.extend(listening_inodes(&text, ports));
                    }
                }
            }
        }
        listening
    }

    /// A sock_diag socket in process `pid`'s network namespace: this thread enters it,
    /// opens the socket (which stays in it) and comes back.
    fn open_in(&self, pid: u32) -> std::io::Result<Socket> {
        let home = self
            .home
            .as_ref()
            .ok_or_else(|| std::io::Error::other("own namespace unknown"))?;
        let there = File::open(format!("/proc/{pid}/ns/net"))?;
        setns(&there)?;
        let socket = sock_diag_socket();
        // Back home whatever happened. Should that fail, the socket is dropped all the same
        // and this namespace read from /proc; nothing else the watcher does depends on its
        // thread's namespace (each socket is opened right after entering its own).
        setns(home).map_err(|e| std::io::Error::other(format!("returning home: {e}")))?;
        socket
    }
}

impl Default for ListenerScan {
    fn default() -> Self {
        Self::new()
    }
}

fn setns(ns: &File) -> std::io::Result<()> {
    // SAFETY: a valid namespace fd; CLONE_NEWNET moves only this thread.
    match unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

fn sock_diag_socket() -> std::io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Asks `socket`'s namespace for its TCP sockets of `family` listening on `ports`.
fn listening_in(socket: &Socket, family: u8, ports: &[u16]) -> std::io::Result<Vec<(u64, u16)>> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let socket_id = match family {
        AF_INET => SocketId::new_v4(),
        _ => SocketId::new_v6(),
    };
    let mut request = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut found = Vec::new();
    let mut datagram = vec![0u8; 32 * 1024];
    loop {
        let size = socket.recv(&mut &mut datagram[..], 0)?;
        match read_answers(&datagram[..size.min(datagram.len())], ports, &mut found) {
            Ok(true) => return Ok(found),
            Ok(false) if size > 0 => {}
            Ok(false) => return Err(std::io::Error::other("sock_diag closed")),
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
}

/// Reads one datagram of a sock_diag dump into `found` (inode, port) for `ports`; true once
/// the dump is done.
pub(crate) fn read_answers(
    mut bytes: &[u8],
    ports: &[u16],
    found: &mut Vec<(u64, u16)>,
) -> Result<bool, String> {
    while !bytes.is_empty() {
        let message = <NetlinkMessage<SockDiagMessage>>::deserialize(bytes)
            .map_err(|e| format!("sock_diag answer: {e}"))?;
        let length = (message.header.length as usize).next_multiple_of(4);
        match message.payload {
            NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                let port = response.header.socket_id.source_port;
                if ports.contains(&port) {
                    found.push((u64::from(response.header.inode), port));
                }
            }
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(e) => return Err(format!("sock_diag: {e}")),
            _ => {}
        }
        if length == 0 || length > bytes.len() {
            break;
        }
        bytes = &bytes[length..];
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespaces_listener_is_found_by_sock_diag_as_by_the_proc_table() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let socket = sock_diag_socket().expect("sock_diag socket");
        let found = listening_in(&socket, AF_INET, &[port]).expect("dump");
        let table = std::fs::read_to_string("/proc/self/net/tcp").expect("table");
        assert_eq!(found, listening_inodes(&table, &[port]));
        assert_eq!(found.len(), 1);
        let pids = [std::process::id()];
        assert_eq!(
            ListenerScan::new().listening(&pids, &[port]),
            found.into_iter().collect()
        );
    }

    #[test]
    fn a_truncated_answer_is_an_error_not_a_panic() {
        let mut found = Vec::new();
        assert!(read_answers(&[1, 2, 3], &[80], &mut found).is_err());
        assert!(found.is_empty());
    }
}
