//! Sans-IO: TLS ring records (a header and a chunk of plaintext) joined into whole calls.
//! A call longer than one chunk comes as consecutive records of one CPU sharing a call
//! number; one whose chunks do not line up (one was lost to a full ring, which the kernel
//! counts) is discarded and counted here.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use capture_common::tls::{
    TLS_CHUNK_HEADER_LEN, TLS_FLAG_FREED, TLS_FLAG_LAST_CHUNK, TLS_FLAG_MIDSTREAM,
    TLS_FLAG_TRUNCATED, TLS_SENT, TlsChunkHeader,
};

use crate::live::ring::ClockOffset;
use crate::packet::Timestamp;

/// What one probed call handed over, or the end of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsCallRecord {
    pub ts: Timestamp,
    /// The stream: process and SSL object.
    pub tgid: u32,
    pub ssl: u64,
    pub event: TlsEvent,
}

/// What happened on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsEvent {
    /// Plaintext sent or received on the connection `local` ↔ `remote`.
    Data {
        local: SocketAddr,
        remote: SocketAddr,
        sent: bool,
        /// The stream was first seen in a read or write (it began before capture).
        midstream: bool,
        bytes: Vec<u8>,
        /// Bytes of the call past the copy limit, missing after `bytes`.
        missing: u64,
    },
    /// The SSL object was freed: the stream ended.
    Freed,
}

/// Joins chunks into calls; counts what does not line up.
pub struct TlsAssembler {
    clock: ClockOffset,
    /// Calls in progress, by (cpu, call number).
    pending: HashMap<(u32, u64), (TlsChunkHeader, Vec<u8>)>,
    discarded: u64,
}

/// Calls assembled at once; more means chunks were lost, and the oldest are dropped.
const MAX_PENDING_CALLS: usize = 256;

impl TlsAssembler {
    pub fn new(clock: ClockOffset) -> Self {
        Self {
            clock,
            pending: HashMap::new(),
            discarded: 0,
        }
    }

    /// Calls discarded because a chunk was missing or a record was malformed.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Takes one ring record; a whole call (or a stream's end) when this completes one.
    pub fn push(&mut self, record: &[u8]) -> Option<TlsCallRecord> {
        let Some(header) = read_header(record) else {
            self.discarded += 1;
            return None;
        };
        if header.flags & TLS_FLAG_FREED != 0 {
            return Some(TlsCallRecord {
                ts: self.clock.to_wall(header.ts_ns),
                tgid: header.tgid,
                ssl: header.ssl,
                event: TlsEvent::Freed,
            });
        }
        let data =
            record.get(TLS_CHUNK_HEADER_LEN..TLS_CHUNK_HEADER_LEN + header.chunk_len as usize);
        let Some(data) = data else {
            self.discarded += 1;
            return None;
        };
        let key = (header.cpu, header.call_seq);
        let last = header.flags & TLS_FLAG_LAST_CHUNK != 0;
        let bytes = if header.chunk_offset == 0 {
            if let Some(_stale) = self.pending.remove(&key) {
                self.discarded += 1;
            }
            if !last {
                if self.pending.len() >= MAX_PENDING_CALLS {
                    self.pending.clear();
                    self.discarded += MAX_PENDING_CALLS as u64;
                }
                self.pending.insert(key, (header, data.to_vec()));
                return None;
            }
            data.to_vec()
        } else {
            let Some((_, mut bytes)) = self.pending.remove(&key) else {
                self.discarded += 1;
                return None;
            };
            if bytes.len() != header.chunk_offset as usize {
                self.discarded += 1;
                return None;
            }
            bytes.extend_from_slice(data);
            if !last {
                self.pending.insert(key, (header, bytes));
                return None;
            }
            bytes
        };
        if bytes.len() != header.captured_len as usize {
            self.discarded += 1;
            return None;
        }
        let missing = if header.flags & TLS_FLAG_TRUNCATED != 0 {
            u64::from(header.call_len.saturating_sub(header.captured_len))
        } else {
            0
        };
        let (local, remote) = addresses(&header)?;
        Some(TlsCallRecord {
            ts: self.clock.to_wall(header.ts_ns),
            tgid: header.tgid,
            ssl: header.ssl,
            event: TlsEvent::Data {
                local,
                remote,
                sent: header.direction == TLS_SENT,
                midstream: header.flags & TLS_FLAG_MIDSTREAM != 0,
                bytes,
                missing,
            },
        })
    }
}

fn read_header(record: &[u8]) -> Option<TlsChunkHeader> {
    let bytes = record.get(..TLS_CHUNK_HEADER_LEN)?;
    // SAFETY: TlsChunkHeader is plain old data of exactly this size (checked above); an
    // unaligned read copies it out.
    Some(unsafe { bytes.as_ptr().cast::<TlsChunkHeader>().read_unaligned() })
}

/// The connection's addresses; an IPv4-mapped IPv6 address (a dual-stack socket) reads as
/// the IPv4 address the wire carries, as packet capture shows it.
fn addresses(h: &TlsChunkHeader) -> Option<(SocketAddr, SocketAddr)> {
    let ip = |raw: [u8; 16]| -> Option<IpAddr> {
        match h.family {
            4 => Some(IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))),
            6 => Some(Ipv6Addr::from(raw).to_canonical()),
            _ => None,
        }
    };
    Some((
        SocketAddr::new(ip(h.local_addr)?, h.local_port),
        SocketAddr::new(ip(h.remote_addr)?, h.remote_port),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use capture_common::tls::TLS_RECEIVED;

    /// A ring record: header plus data, the way the kernel side writes it.
    pub(crate) fn record(header: &TlsChunkHeader, data: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; TLS_CHUNK_HEADER_LEN];
        // SAFETY: the buffer is a header long; an unaligned write copies the header in.
        unsafe {
            out.as_mut_ptr()
                .cast::<TlsChunkHeader>()
                .write_unaligned(*header)
        };
        out.extend_from_slice(data);
        out.extend_from_slice(&[0xAA; 7]); // slack the reader must ignore
        out
    }

    pub(crate) fn header(
        call_seq: u64,
        offset: u32,
        len: u32,
        total: u32,
        last: bool,
    ) -> TlsChunkHeader {
        let mut local_addr = [0; 16];
        local_addr[..4].copy_from_slice(&[10, 0, 0, 1]);
        let mut remote_addr = [0; 16];
        remote_addr[..4].copy_from_slice(&[10, 0, 0, 2]);
        TlsChunkHeader {
            ts_ns: 5,
            ssl: 0x1000,
            call_seq,
            tgid: 42,
            cpu: 1,
            call_len: total,
            captured_len: total,
            chunk_offset: offset,
            chunk_len: len,
            local_port: 8443,
            remote_port: 50000,
            family: 4,
            direction: TLS_RECEIVED,
            flags: if last { TLS_FLAG_LAST_CHUNK } else { 0 },
            _pad: 0,
            local_addr,
            remote_addr,
        }
    }

    fn clock() -> ClockOffset {
        ClockOffset {
            realtime_minus_monotonic_ns: 1_000,
        }
    }

    #[test]
    fn a_call_in_one_chunk_comes_out_whole_with_its_connection() {
        let mut a = TlsAssembler::new(clock());
        let call = a
            .push(&record(&header(1, 0, 5, 5, true), b"GET /"))
            .expect("one whole call");
        assert_eq!(call.ts, Timestamp(1_005));
        assert_eq!((call.tgid, call.ssl), (42, 0x1000));
        let TlsEvent::Data {
            local,
            remote,
            sent,
            bytes,
            missing,
            midstream,
        } = call.event
        else {
            panic!("data expected");
        };
        assert_eq!(local, "10.0.0.1:8443".parse().expect("addr"));
        assert_eq!(remote, "10.0.0.2:50000".parse().expect("addr"));
        assert!(!sent && !midstream);
        assert_eq!((bytes.as_slice(), missing), (&b"GET /"[..], 0));
    }

    #[test]
    fn chunks_of_a_call_are_joined_and_a_missing_chunk_discards_the_call() {
        let mut a = TlsAssembler::new(clock());
        assert!(
            a.push(&record(&header(1, 0, 3, 6, false), b"abc"))
                .is_none()
        );
        let whole = a
            .push(&record(&header(1, 3, 3, 6, true), b"def"))
            .expect("joined");
        assert!(matches!(whole.event, TlsEvent::Data { ref bytes, .. } if bytes == b"abcdef"));
        // Call 2 lost its middle chunk: the last one does not line up.
        assert!(
            a.push(&record(&header(2, 0, 3, 9, false), b"abc"))
                .is_none()
        );
        assert!(a.push(&record(&header(2, 6, 3, 9, true), b"ghi")).is_none());
        assert_eq!(a.discarded(), 1);
        // A last chunk with no start at all.
        assert!(a.push(&record(&header(3, 3, 3, 6, true), b"def")).is_none());
        assert_eq!(a.discarded(), 2);
        // A record too short for its header.
        assert!(a.push(&[0u8; 10]).is_none());
        assert_eq!(a.discarded(), 3);
    }

    #[test]
    fn truncated_calls_say_how_much_is_missing_and_mapped_addresses_read_as_ipv4() {
        let mut a = TlsAssembler::new(clock());
        let mut h = header(1, 0, 4, 4, true);
        h.call_len = 10;
        h.flags |= TLS_FLAG_TRUNCATED | TLS_FLAG_MIDSTREAM;
        h.family = 6;
        h.local_addr = "::ffff:10.0.0.1".parse::<Ipv6Addr>().expect("v6").octets();
        h.remote_addr = "fd00::2".parse::<Ipv6Addr>().expect("v6").octets();
        let call = a.push(&record(&h, b"abcd")).expect("call");
        let TlsEvent::Data {
            local,
            remote,
            missing,
            midstream,
            ..
        } = call.event
        else {
            panic!("data expected");
        };
        assert_eq!(local, "10.0.0.1:8443".parse().expect("addr"));
        assert_eq!(remote, "[fd00::2]:50000".parse().expect("addr"));
        assert_eq!((missing, midstream), (6, true));
    }

    #[test]
    fn a_freed_record_ends_its_stream() {
        let mut a = TlsAssembler::new(clock());
        let mut h = header(0, 0, 0, 0, false);
        h.flags = TLS_FLAG_FREED;
        let call = a.push(&record(&h, b"")).expect("freed");
        assert_eq!(call.event, TlsEvent::Freed);
    }
}
