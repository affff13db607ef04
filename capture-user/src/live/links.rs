//! Links as they come and go: a thread listens to the kernel's rtnetlink link events (the
//! `RTMGRP_LINK` group) and reports each link that appears or goes away in this network
//! namespace, so a capture with `--iface` patterns attaches to new pod veths within a second
//! and lets go of vanished ones. Parsing a datagram into events (`link_events`) is sans-IO.

use std::os::fd::AsRawFd as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The rtnetlink multicast group of link changes.
const RTMGRP_LINK: u32 = 1;

/// How often the watcher looks at its stop flag while no event comes.
const POLL: Duration = Duration::from_millis(200);

/// A link that appeared (or changed: the kernel says NEWLINK for state changes too) or went
/// away (deleted, or moved to another namespace).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    Added { index: u32, name: String },
    Removed { index: u32, name: String },
}

/// The link events in one datagram from the kernel; anything else in it is skipped.
pub fn link_events(datagram: &[u8]) -> Vec<LinkEvent> {
    let mut events = Vec::new();
    let mut rest = datagram;
    while rest.len() >= 16 {
        let length = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if length < 16 || length > rest.len() {
            break;
        }
        if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..length])
            && let NetlinkPayload::InnerMessage(inner) = message.payload
        {
            let event = match inner {
                RouteNetlinkMessage::NewLink(link) => name_of(&link).map(|name| LinkEvent::Added {
                    index: link.header.index,
                    name,
                }),
                RouteNetlinkMessage::DelLink(link) => {
                    name_of(&link).map(|name| LinkEvent::Removed {
                        index: link.header.index,
                        name,
                    })
                }
                _ => None,
            };
            events.extend(event);
        }
        // Messages are padded to 4 bytes.
        let next = length.next_multiple_of(4).min(rest.len());
        rest = &rest[next..];
    }
    events
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// The thread that reports link events until dropped.
pub struct LinkWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LinkWatcher {
    /// Subscribes to link events (before returning, so no link created afterwards is missed)
    /// and calls `on_event` for each on a thread of its own.
    pub fn spawn(mut on_event: impl FnMut(LinkEvent) + Send + 'static) -> std::io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        set_receive_timeout(&socket, POLL)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("capture-links".into())
            .spawn(move || {
                let mut buf = Vec::with_capacity(64 << 10);
                while !stopping.load(Ordering::Relaxed) {
                    buf.clear();
                    match socket.recv(&mut buf, 0) {
                        Ok(_) => link_events(&buf).into_iter().for_each(&mut on_event),
                        Err(e) if is_timeout(&e) => {}
                        Err(e) => {
                            // ENOBUFS: events were lost; the next ones still come.
                            log::warn!("reading link events: {e}");
                            if e.raw_os_error() != Some(libc::ENOBUFS) {
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LinkWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

fn set_receive_timeout(socket: &Socket, timeout: Duration) -> std::io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt with a valid fd and a timeval of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkHeader;

    /// A datagram holding `messages`, as the kernel sends them.
    fn datagram(messages: Vec<RouteNetlinkMessage>) -> Vec<u8> {
        let mut out = Vec::new();
        for inner in messages {
            let mut m = NetlinkMessage::new(
                NetlinkHeader::default(),
                NetlinkPayload::InnerMessage(inner),
            );
            m.finalize();
            let mut buf = vec![0; m.buffer_len()];
            m.serialize(&mut buf);
            out.extend_from_slice(&buf);
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    fn link(index: u32, name: Option<&str>) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = index;
        if let Some(name) = name {
            link.attributes.push(LinkAttribute::IfName(name.into()));
        }
        link
    }

    #[test]
    fn new_and_deleted_links_are_read_and_the_rest_skipped() {
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewLink(link(7, Some("vethp1"))),
            RouteNetlinkMessage::GetLink(link(8, Some("ignored"))),
            RouteNetlinkMessage::NewLink(link(9, None)),
            RouteNetlinkMessage::DelLink(link(7, Some("vethp1"))),
        ]);
        assert_eq!(
            link_events(&bytes),
            [
                LinkEvent::Added {
                    index: 7,
                    name: "vethp1".into()
                },
                LinkEvent::Removed {
                    index: 7,
                    name: "vethp1".into()
                },
            ]
        );
    }

    #[test]
    fn cut_or_garbage_datagrams_give_what_is_whole_and_never_panic() {
        let bytes = datagram(vec![
            RouteNetlinkMessage::NewLink(link(3, Some("eth0"))),
            RouteNetlinkMessage::NewLink(link(4, Some("eth1"))),
        ]);
        for cut in 0..bytes.len() {
            let events = link_events(&bytes[..cut]);
            assert!(events.len() <= 2, "cut at {cut}");
        }
        assert_eq!(link_events(&bytes).len(), 2);
        assert!(link_events(&[0xff; 40]).is_empty());
    }
}
