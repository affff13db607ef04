//! What the TLS plaintext probes (`--tls`) and userspace share: the ring record that carries
//! the bytes an application handed to (or got from) its TLS library, the counters, the kinds
//! of call the probes are attached to, and the kernel structure offsets userspace reads from
//! BTF so the probes can find the TCP connection behind a file descriptor.

/// Name of the BPF ring buffer the TLS probes write plaintext into.
pub const TLS_RING_MAP: &str = "TLS_DATA";
/// Name of the per-CPU array of [`TlsCounter`] values.
pub const TLS_COUNTERS_MAP: &str = "TLS_COUNTERS";
/// Name of the hash of calls in progress (thread to call), sized by userspace.
pub const TLS_CALLS_MAP: &str = "TLS_CALLS";
/// Name of the LRU hash of (process, SSL object) to its socket or file descriptor, sized by
/// userspace.
pub const TLS_STREAMS_MAP: &str = "TLS_STREAMS";
/// Name of the global holding [`KernelOffsets`], set by userspace at load.
pub const KERNEL_OFFSETS_GLOBAL: &str = "KERNEL_OFFSETS";
/// Name of the global holding the `TLS_SIDE_*` bits, set by userspace at load.
pub const TLS_SIDE_GLOBAL: &str = "TLS_SIDE";

/// [`TLS_SIDE_GLOBAL`] bit: keep streams whose local port is a configured port (the process
/// serves it).
pub const TLS_SIDE_SERVER: u8 = 1;
/// [`TLS_SIDE_GLOBAL`] bit: keep streams whose remote port is a configured port (the process
/// calls it).
pub const TLS_SIDE_CLIENT: u8 = 2;

/// Largest part of one call's plaintext copied; the rest of a longer call is counted and
/// shows as a gap in its stream. 256 KiB is far above what libraries hand over per call (a
/// TLS record is 16 KiB; curl and nginx write at most 64 KiB at once).
pub const TLS_MAX_CALL_LEN: u32 = 1 << 18;
/// Chunks one call's plaintext may take ([`TLS_MAX_CALL_LEN`] / [`crate::CHUNK_LEN`]).
pub const TLS_MAX_CHUNKS: u32 = TLS_MAX_CALL_LEN / crate::CHUNK_LEN;

/// Which library function a probe is attached to: its attach cookie.
#[repr(u64)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsCall {
    /// `int SSL_write(SSL *, const void *buf, int num)`
    Write = 0,
    /// `int SSL_read(SSL *, void *buf, int num)`
    Read = 1,
    /// `int SSL_write_ex(SSL *, const void *buf, size_t num, size_t *written)`
    WriteEx = 2,
    /// `int SSL_read_ex(SSL *, void *buf, size_t num, size_t *readbytes)`
    ReadEx = 3,
    /// `int SSL_do_handshake(SSL *)`: no data, but the socket it reads and writes is learnt.
    Handshake = 4,
    /// `int SSL_set_fd(SSL *, int fd)`: the socket, directly.
    SetFd = 5,
    /// `void SSL_free(SSL *)`: the stream ends.
    Free = 6,
    /// OpenSSL's `int ssl_read_internal(SSL *, void *buf, size_t num, size_t *readbytes)`,
    /// which `SSL_read` and `SSL_read_ex` call: probed instead of them when found (see
    /// `capture-user`'s `tls::sites`). Success is a return above 0.
    ReadInternal = 7,
    /// `int ssl_write_internal(SSL *, const void *buf, size_t num, size_t *written)`
    /// (OpenSSL 1.1.1 to 3.1).
    WriteInternal = 8,
    /// `int ssl_write_internal(SSL *, const void *buf, size_t num, uint64_t flags,
    /// size_t *written)` (OpenSSL 3.2 on).
    WriteInternalFlags = 9,
}

impl TlsCall {
    /// Every exported function probed: its symbol, its kind, and whether its return is
    /// probed too. Where `tls::sites` finds the internal read and write functions, those
    /// are probed instead of the read and write ones here.
    pub const EXPORTED: [(&'static str, TlsCall, bool); 7] = [
        ("SSL_write", TlsCall::Write, true),
        ("SSL_read", TlsCall::Read, true),
        ("SSL_write_ex", TlsCall::WriteEx, true),
        ("SSL_read_ex", TlsCall::ReadEx, true),
        ("SSL_do_handshake", TlsCall::Handshake, true),
        ("SSL_set_fd", TlsCall::SetFd, false),
        ("SSL_free", TlsCall::Free, false),
    ];

    /// Decodes an attach cookie.
    pub fn from_u64(value: u64) -> Option<Self> {
        Some(match value {
            0 => Self::Write,
            1 => Self::Read,
            2 => Self::WriteEx,
            3 => Self::ReadEx,
            4 => Self::Handshake,
            5 => Self::SetFd,
            6 => Self::Free,
            7 => Self::ReadInternal,
            8 => Self::WriteInternal,
            9 => Self::WriteInternalFlags,
            _ => return None,
        })
    }

    /// True for the calls whose plaintext the application sends.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Self::Write | Self::WriteEx | Self::WriteInternal | Self::WriteInternalFlags
        )
    }

    /// The argument (0-based) pointing at where the call stores its byte count, for the
    /// calls that return success rather than the count.
    pub fn count_pointer_arg(self) -> Option<usize> {
        match self {
            Self::ReadEx | Self::WriteEx | Self::ReadInternal | Self::WriteInternal => Some(3),
            Self::WriteInternalFlags => Some(4),
            _ => None,
        }
    }
}

/// [`TlsChunkHeader::direction`]: the process sent these bytes (`SSL_write`).
pub const TLS_SENT: u8 = 0;
/// [`TlsChunkHeader::direction`]: the process received these bytes (`SSL_read`).
pub const TLS_RECEIVED: u8 = 1;
/// [`TlsChunkHeader::flags`]: the last chunk of its call.
pub const TLS_FLAG_LAST_CHUNK: u8 = 1;
/// [`TlsChunkHeader::flags`]: the call carried more than [`TLS_MAX_CALL_LEN`] bytes; the
/// rest is missing.
pub const TLS_FLAG_TRUNCATED: u8 = 2;
/// [`TlsChunkHeader::flags`]: no data; the SSL object was freed, its stream ended.
pub const TLS_FLAG_FREED: u8 = 4;

/// [`TlsChunkHeader::flags`]: the stream was first seen in a read or write, not in its
/// handshake: it began before capture did, and its first bytes may be mid-message.
pub const TLS_FLAG_MIDSTREAM: u8 = 8;

/// Header of every TLS ring record; `chunk_len` bytes of plaintext follow it (the record may
/// be longer, as for packets: one of [`crate::RECORD_DATA_SIZES`]).
///
/// A call is one or more consecutive chunks from the same CPU sharing `cpu` and `call_seq`.
/// The stream is (`tgid`, `ssl`); its TCP connection is the socket the kernel found behind
/// the SSL object's file descriptor: local and remote address and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsChunkHeader {
    /// `bpf_ktime_get_ns()` when the call returned.
    pub ts_ns: u64,
    /// Address of the SSL object in the process: with `tgid`, the stream.
    pub ssl: u64,
    /// Per-CPU call sequence number, to tie chunks to their call.
    pub call_seq: u64,
    /// Process id.
    pub tgid: u32,
    /// CPU that produced the record.
    pub cpu: u32,
    /// Bytes the call handed over.
    pub call_len: u32,
    /// Bytes of the call copied in total (min(call_len, TLS_MAX_CALL_LEN)).
    pub captured_len: u32,
    /// Offset of this chunk's data within the call's bytes.
    pub chunk_offset: u32,
    /// Bytes of plaintext following this header.
    pub chunk_len: u32,
    /// Local TCP port (host order).
    pub local_port: u16,
    /// Remote TCP port (host order).
    pub remote_port: u16,
    /// 4 or 6: how to read the addresses (IPv4 in the first four bytes).
    pub family: u8,
    /// [`TLS_SENT`] or [`TLS_RECEIVED`].
    pub direction: u8,
    /// `TLS_FLAG_*` bits.
    pub flags: u8,
    pub _pad: u8,
    /// Local address (network order).
    pub local_addr: [u8; 16],
    /// Remote address (network order).
    pub remote_addr: [u8; 16],
}

/// Size of [`TlsChunkHeader`] on both sides.
pub const TLS_CHUNK_HEADER_LEN: usize = core::mem::size_of::<TlsChunkHeader>();

const _: () = assert!(TLS_CHUNK_HEADER_LEN == 88);
const _: () = assert!(core::mem::offset_of!(TlsChunkHeader, local_addr) == 56);

/// Index of each per-CPU counter in the [`TLS_COUNTERS_MAP`] array.
///
/// Invariant: `calls_matched == calls_captured + dropped_ring_full + dropped_copy_failed`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsCounter {
    /// Read and write calls that returned data.
    Calls = 0,
    /// Calls whose connection is on a configured port (and side).
    CallsMatched = 1,
    /// Matched calls written whole to the ring.
    CallsCaptured = 2,
    /// Matched calls lost because the ring was full.
    DroppedRingFull = 3,
    /// Matched calls whose bytes the kernel could not read from the process.
    DroppedCopyFailed = 4,
    /// Matched calls longer than [`TLS_MAX_CALL_LEN`], cut there.
    Truncated = 5,
    /// Calls whose stream's socket or file descriptor was never seen: the connection is
    /// unknown, the bytes are not guessed at.
    UnresolvedFd = 6,
    /// Calls whose descriptor is not a TCP socket (or could not be read).
    UnresolvedSocket = 7,
    /// Calls on connections of other ports.
    OtherPorts = 8,
    /// Calls whose start was not seen (the probes were attached mid-call, or the table of
    /// calls in progress was full).
    MissedEntry = 9,
}

/// Number of [`TlsCounter`] slots.
pub const TLS_COUNTER_SLOTS: u32 = 10;

impl TlsCounter {
    /// Every counter, in slot order.
    pub const ALL: [TlsCounter; TLS_COUNTER_SLOTS as usize] = [
        TlsCounter::Calls,
        TlsCounter::CallsMatched,
        TlsCounter::CallsCaptured,
        TlsCounter::DroppedRingFull,
        TlsCounter::DroppedCopyFailed,
        TlsCounter::Truncated,
        TlsCounter::UnresolvedFd,
        TlsCounter::UnresolvedSocket,
        TlsCounter::OtherPorts,
        TlsCounter::MissedEntry,
    ];

    /// Name used in logs, summaries and metrics alike (prefixed `tls_`).
    pub fn name(self) -> &'static str {
        match self {
            TlsCounter::Calls => "tls_calls",
            TlsCounter::CallsMatched => "tls_calls_matched",
            TlsCounter::CallsCaptured => "tls_calls_captured",
            TlsCounter::DroppedRingFull => "tls_dropped_ring_full",
            TlsCounter::DroppedCopyFailed => "tls_dropped_copy_failed",
            TlsCounter::Truncated => "tls_truncated",
            TlsCounter::UnresolvedFd => "tls_unresolved_fd",
            TlsCounter::UnresolvedSocket => "tls_unresolved_socket",
            TlsCounter::OtherPorts => "tls_other_ports",
            TlsCounter::MissedEntry => "tls_missed_entry",
        }
    }

    /// True for the counters that count plaintext lost (what recordings report as drops).
    pub fn is_loss(self) -> bool {
        matches!(
            self,
            TlsCounter::DroppedRingFull
                | TlsCounter::DroppedCopyFailed
                | TlsCounter::Truncated
                | TlsCounter::UnresolvedFd
                | TlsCounter::UnresolvedSocket
                | TlsCounter::MissedEntry
        )
    }
}

/// Byte offsets of the kernel structure fields the probes walk from the current task to the
/// socket behind a file descriptor: task → files → fdtable → file → (inode mode, socket) →
/// sock. Read from the running kernel's BTF by userspace, so no kernel headers are needed and
/// the walk follows the kernel it runs on.
/// A [`KernelOffsets`] field the running kernel does not have.
pub const NO_OFFSET: u32 = u32::MAX;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_max_fds: u32,
    pub fdtable_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_rcv_saddr: u32,
    pub sk_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    /// `sock.sk_protocol` (a plain `u16` from Linux 5.6 on); [`NO_OFFSET`] where the kernel's
    /// BTF has no such field, and the `sock` tracepoints are then not used.
    pub sk_protocol: u32,
    /// 1 once userspace filled the offsets; the probes do nothing before.
    pub valid: u32,
}
