//! `--tls`: uprobes on the TLS library's read and write calls copy the plaintext an
//! application hands over into the `TLS_DATA` ring, with the TCP connection it travels on.
//!
//! A call is seen twice: at entry (`tls_call`: the SSL object and the buffer, remembered per
//! thread in `TLS_CALLS`) and at return (`tls_return`: how many bytes, then the copy). The
//! connection is kept per (process, SSL object) in `TLS_STREAMS`, learnt from the TCP sends
//! and receives the thread makes while inside a TLS call: the `sock_send_length` and
//! `sock_recv_length` raw tracepoints (`tls_sock_seen`) hand over the socket itself, and
//! only socket I/O pays for them. On kernels before 6.4, which lack them, the socket syscall
//! tracepoints (`tls_fd_seen`) learn the descriptor instead, at a cost to every read and
//! write on the node; `SSL_set_fd` gives the descriptor too. A descriptor is walked to its
//! socket at return (task → files → socket, offsets from BTF in `KERNEL_OFFSETS`). The call
//! is kept only when its port is configured; one whose connection cannot be found is
//! counted, never guessed.

use aya_ebpf::{
    EbpfContext, Global,
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated::bpf_get_attach_cookie, generated::bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint, tracepoint, uprobe, uretprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, RetProbeContext, TracePointContext},
};
use capture_common::CHUNK_LEN;
use capture_common::tls::{
    KernelOffsets, TLS_COUNTER_SLOTS, TLS_FLAG_FREED, TLS_FLAG_LAST_CHUNK, TLS_FLAG_MIDSTREAM,
    TLS_FLAG_TRUNCATED, TLS_MAX_CALL_LEN, TLS_MAX_CHUNKS, TLS_RECEIVED, TLS_SENT, TLS_SIDE_CLIENT,
    TLS_SIDE_SERVER, TlsCall, TlsChunkHeader, TlsCounter,
};

use crate::WAKEUP_BYTES;
use crate::port_wanted;
use crate::record::{Lost, Source, emit_full, emit_header, emit_last, wakeup_flags};

/// Plaintext chunks for userspace. Userspace sizes it at load time (`--ring-size`); packet
/// captures leave it at one page.
#[map(name = "TLS_DATA")]
static TLS_DATA: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Per-CPU counters, indexed by [`TlsCounter`].
#[map(name = "TLS_COUNTERS")]
static TLS_COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TLS_COUNTER_SLOTS, 0);

/// Calls in progress, by thread (`pid_tgid`). Sized by userspace; not preallocated.
#[map(name = "TLS_CALLS")]
static TLS_CALLS: HashMap<u64, ActiveCall> = HashMap::with_max_entries(1, BPF_F_NO_PREALLOC);

/// The connection of each (process, SSL object) seen. Sized by userspace; the least recently
/// used entry makes room.
#[map(name = "TLS_STREAMS")]
static TLS_STREAMS: LruHashMap<SslKey, StreamSocket> = LruHashMap::with_max_entries(1, 0);

/// Kernel structure offsets from BTF, set by userspace at load.
#[unsafe(no_mangle)]
static KERNEL_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    task_files: 0,
    files_fdt: 0,
    fdtable_max_fds: 0,
    fdtable_fd: 0,
    file_inode: 0,
    file_private_data: 0,
    inode_mode: 0,
    socket_sk: 0,
    sk_family: 0,
    sk_num: 0,
    sk_dport: 0,
    sk_rcv_saddr: 0,
    sk_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_v6_daddr: 0,
    sk_protocol: 0,
    valid: 0,
});

/// Which sides to keep (`TLS_SIDE_*` bits), set by userspace at load.
#[unsafe(no_mangle)]
static TLS_SIDE: Global<u8> = Global::new(TLS_SIDE_SERVER | TLS_SIDE_CLIENT);

const BPF_F_NO_PREALLOC: u32 = 1;
/// [`StreamSocket::fd`] when only the socket is known.
const NO_FD: u32 = u32::MAX;
/// [`StreamSocket::flags`]: the stream was first seen in the middle (in a read or write
/// rather than its handshake or `SSL_set_fd`): it began before capture.
const STREAM_MIDSTREAM: u32 = 1;
const IPPROTO_TCP: u16 = 6;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

/// A read or write call between its entry and its return.
#[repr(C)]
#[derive(Clone, Copy)]
struct ActiveCall {
    ssl: u64,
    buf: u64,
    /// `SSL_*_ex`: where the library writes the byte count.
    len_out: u64,
    /// [`TlsCall`] as u64.
    kind: u64,
}

/// A stream: the process and its SSL object.
#[repr(C)]
#[derive(Clone, Copy)]
struct SslKey {
    tgid: u64,
    ssl: u64,
}

/// Where a stream's connection is. The socket wins when both are known; a descriptor is
/// walked to its socket at each return.
#[repr(C)]
#[derive(Clone, Copy)]
struct StreamSocket {
    /// The kernel's `struct sock`, from the `sock` tracepoints; 0 when not known.
    sock: u64,
    /// The descriptor, from `SSL_set_fd` or the socket syscalls; [`NO_FD`] when not known.
    fd: u32,
    /// `STREAM_*` bits.
    flags: u32,
}

/// The TCP connection behind a descriptor.
struct Connection {
    family: u8,
    local_port: u16,
    remote_port: u16,
    local_addr: [u8; 16],
    remote_addr: [u8; 16],
}

/// Adds one to this CPU's `counter`; returns the new value.
#[inline(always)]
fn count(counter: TlsCounter) -> u64 {
    match TLS_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot; uprobe programs do not nest on a CPU (they run with
        // preemption off, and a BPF program cannot trigger a uprobe).
        Some(slot) => unsafe {
            *slot += 1;
            *slot
        },
        None => 0,
    }
}

/// The probe's attach cookie: the [`TlsCall`] it is attached to.
#[inline(always)]
fn cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: the helper only reads the program's run context.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) }
}

fn stream_key(ssl: u64) -> SslKey {
    SslKey {
        tgid: bpf_get_current_pid_tgid() >> 32,
        ssl,
    }
}

/// Entry of every probed function (the cookie says which).
#[uprobe]
pub fn tls_call(ctx: ProbeContext) -> u32 {
    let kind = cookie(&ctx);
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    if ssl == 0 {
        return 0;
    }
    if kind == TlsCall::SetFd as u64 {
        let fd: u64 = ctx.arg(1).unwrap_or(u64::MAX);
        let stream = StreamSocket {
            sock: 0,
            fd: fd as u32,
            flags: 0,
        };
        let _ = TLS_STREAMS.insert(&stream_key(ssl), &stream, 0);
        return 0;
    }
    if kind == TlsCall::Free as u64 {
        freed(ssl);
        return 0;
    }
    // Both candidate registers are read at fixed offsets first: selecting the offset
    // instead makes a computed context access, which the verifier refuses.
    let (arg3, arg4): (u64, u64) = (ctx.arg(3).unwrap_or(0), ctx.arg(4).unwrap_or(0));
    let call = ActiveCall {
        ssl,
        buf: ctx.arg(1).unwrap_or(0),
        len_out: match TlsCall::from_u64(kind).and_then(TlsCall::count_pointer_arg) {
            Some(3) => arg3,
            Some(4) => arg4,
            _ => 0,
        },
        kind,
    };
    // A handshake inside a read or write (renegotiation) must not replace that call.
    let flags = if kind == TlsCall::Handshake as u64 {
        BPF_NOEXIST as u64
    } else {
        0
    };
    let _ = TLS_CALLS.insert(&bpf_get_current_pid_tgid(), &call, flags);
    0
}

/// `SSL_free`: the stream ends; tell userspace when it knew the stream.
#[inline(always)]
fn freed(ssl: u64) {
    let key = stream_key(ssl);
    // SAFETY: the value is copied out at once.
    if unsafe { TLS_STREAMS.get(&key) }.is_none() {
        return;
    }
    let _ = TLS_STREAMS.remove(&key);
    let header = TlsChunkHeader {
        // SAFETY: helpers without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ssl,
        call_seq: 0,
        tgid: key.tgid as u32,
        cpu: unsafe { bpf_get_smp_processor_id() },
        call_len: 0,
        captured_len: 0,
        chunk_offset: 0,
        chunk_len: 0,
        local_port: 0,
        remote_port: 0,
        family: 0,
        direction: 0,
        flags: TLS_FLAG_FREED,
        _pad: 0,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    let _ = emit_header(&TLS_DATA, &header);
}

/// Return of the read, write and handshake functions (the cookie says which).
#[uretprobe]
pub fn tls_return(ctx: RetProbeContext) -> u32 {
    let kind = cookie(&ctx);
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else {
        if kind != TlsCall::Handshake as u64 {
            count(TlsCounter::MissedEntry);
        }
        return 0;
    };
    if call.kind != kind {
        // The return of a call nested in another (a handshake inside a read): the outer
        // call's entry stays for its own return.
        return 0;
    }
    let _ = TLS_CALLS.remove(&pid_tgid);
    if kind == TlsCall::Handshake as u64 {
        return 0;
    }
    let ret: i64 = ctx.ret();
    let len = if call.len_out != 0 {
        // `_ex` calls return 1 on success, the internal functions above 0.
        if ret as i32 <= 0 {
            return 0;
        }
        // SAFETY: reads the process's memory through the fault-tolerant helper.
        match unsafe { aya_ebpf::helpers::bpf_probe_read_user(call.len_out as *const u64) } {
            Ok(n) => n,
            Err(_) => return 0,
        }
    } else {
        let n = ret as i32;
        if n <= 0 {
            return 0;
        }
        n as u64
    };
    if len == 0 {
        return 0;
    }
    count(TlsCounter::Calls);
    let key = SslKey {
        tgid: pid_tgid >> 32,
        ssl: call.ssl,
    };
    // SAFETY: the value is copied out at once.
    let Some(stream) = (unsafe { TLS_STREAMS.get(&key) }).copied() else {
        count(TlsCounter::UnresolvedFd);
        return 0;
    };
    let sock = match stream.sock {
        0 => sock_of_fd(stream.fd),
        sock => Some(sock),
    };
    let Some(conn) = sock.and_then(connection_of) else {
        count(TlsCounter::UnresolvedSocket);
        return 0;
    };
    let side = TLS_SIDE.load();
    let wanted = (side & TLS_SIDE_SERVER != 0 && port_wanted(conn.local_port))
        || (side & TLS_SIDE_CLIENT != 0 && port_wanted(conn.remote_port));
    if !wanted {
        count(TlsCounter::OtherPorts);
        return 0;
    }
    let call_seq = count(TlsCounter::CallsMatched);
    let write = TlsCall::from_u64(kind).is_some_and(TlsCall::is_write);
    let midstream = stream.flags & STREAM_MIDSTREAM != 0;
    copy_call(&key, &conn, call.buf, len, write, midstream, call_seq);
    0
}

/// `sock:sock_send_length` and `sock:sock_recv_length` (Linux 6.4 on), which every socket
/// send and receive passes after its I/O, as raw tracepoints (no record is built): when the
/// thread is inside a TLS call and the socket is TCP, it is the SSL object's.
#[raw_tracepoint]
pub fn tls_sock_seen(ctx: RawTracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    // TP_PROTO(struct sock *sk, int ret, int flags)
    let sock: u64 = ctx.arg(0);
    let off = KERNEL_OFFSETS.load();
    if off.valid == 0 || kread::<u16>(sock, off.sk_protocol) != Some(IPPROTO_TCP) {
        return 0;
    }
    remember(pid_tgid, &call, sock, NO_FD);
    0
}

/// Any socket syscall (read, write, send, recv and their vector forms), attached on kernels
/// without the `sock` tracepoints: when the thread is inside a TLS call, the descriptor is
/// the SSL object's.
#[tracepoint]
pub fn tls_fd_seen(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out at once.
    let Some(call) = (unsafe { TLS_CALLS.get(&pid_tgid) }).copied() else {
        return 0;
    };
    // Every syscalls:sys_enter_* event has its first argument (here the descriptor) at 16.
    // SAFETY: reads the tracepoint's record through the bounds-checked helper.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(16) }) else {
        return 0;
    };
    remember(pid_tgid, &call, 0, fd as u32);
    0
}

/// Remembers where the stream of the thread's `call` is: its socket, or (with `sock` 0) its
/// descriptor.
#[inline(always)]
fn remember(pid_tgid: u64, call: &ActiveCall, sock: u64, fd: u32) {
    let key = SslKey {
        tgid: pid_tgid >> 32,
        ssl: call.ssl,
    };
    // SAFETY: the value is copied out at once.
    let known = unsafe { TLS_STREAMS.get(&key) }.copied();
    let stream = match known {
        Some(s) if sock != 0 && s.sock == sock => return,
        Some(s) if sock == 0 && s.sock == 0 && s.fd == fd => return,
        // Same stream, new socket or descriptor: keep what is known of its start.
        Some(s) => StreamSocket {
            sock,
            fd: if sock != 0 { s.fd } else { fd },
            flags: s.flags,
        },
        None => StreamSocket {
            sock,
            fd,
            flags: first_seen_flags(call),
        },
    };
    let _ = TLS_STREAMS.insert(&key, &stream, 0);
}

/// A stream first seen in a read or write, not in its handshake, began before capture.
#[inline(always)]
fn first_seen_flags(call: &ActiveCall) -> u32 {
    if call.kind == TlsCall::Handshake as u64 {
        0
    } else {
        STREAM_MIDSTREAM
    }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
fn kread<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: the helper is fault-tolerant; a bad address is an error, not a crash.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The socket behind descriptor `fd` of the current process: task → files → fdtable →
/// file; a socket inode; file → socket → sock.
#[inline(always)]
fn sock_of_fd(fd: u32) -> Option<u64> {
    let off = KERNEL_OFFSETS.load();
    if off.valid == 0 || fd == NO_FD {
        return None;
    }
    // SAFETY: helper without preconditions.
    let task = unsafe { bpf_get_current_task() };
    let files: u64 = kread(task, off.task_files)?;
    let fdt: u64 = kread(files, off.files_fdt)?;
    let max_fds: u32 = kread(fdt, off.fdtable_max_fds)?;
    if fd >= max_fds {
        return None;
    }
    let fds: u64 = kread(fdt, off.fdtable_fd)?;
    let file: u64 = kread(fds, fd * 8)?;
    let inode: u64 = kread(file, off.file_inode)?;
    let mode: u16 = kread(inode, off.inode_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return None;
    }
    let socket: u64 = kread(file, off.file_private_data)?;
    kread(socket, off.socket_sk)
}

/// The addresses and ports of TCP socket `sk`.
#[inline(always)]
fn connection_of(sk: u64) -> Option<Connection> {
    let off = KERNEL_OFFSETS.load();
    if off.valid == 0 {
        return None;
    }
    let family: u16 = kread(sk, off.sk_family)?;
    let local_port: u16 = kread(sk, off.sk_num)?;
    let remote_port: u16 = u16::from_be(kread(sk, off.sk_dport)?);
    let mut conn = Connection {
        family: 4,
        local_port,
        remote_port,
        local_addr: [0; 16],
        remote_addr: [0; 16],
    };
    if family == AF_INET {
        let local: [u8; 4] = kread(sk, off.sk_rcv_saddr)?;
        let remote: [u8; 4] = kread(sk, off.sk_daddr)?;
        conn.local_addr[..4].copy_from_slice(&local);
        conn.remote_addr[..4].copy_from_slice(&remote);
    } else if family == AF_INET6 {
        conn.family = 6;
        conn.local_addr = kread(sk, off.sk_v6_rcv_saddr)?;
        conn.remote_addr = kread(sk, off.sk_v6_daddr)?;
    } else {
        return None;
    }
    Some(conn)
}

/// A process's buffer as a record's data source.
struct UserBuffer(u64);

impl Source for UserBuffer {
    #[inline(always)]
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: writes at most `len` bytes into `dst` (inside the reserved record); the
        // source is read through the fault-tolerant helper.
        unsafe {
            bpf_probe_read_user(
                dst.cast(),
                len,
                (self.0 + u64::from(offset)) as *const core::ffi::c_void,
            ) == 0
        }
    }
}

/// Copies a call's plaintext into the ring, chunk by chunk, and counts the outcome.
#[inline(always)]
fn copy_call(
    key: &SslKey,
    conn: &Connection,
    buf: u64,
    len: u64,
    write: bool,
    midstream: bool,
    call_seq: u64,
) {
    let truncated = len > u64::from(TLS_MAX_CALL_LEN);
    let captured_len = if truncated {
        TLS_MAX_CALL_LEN
    } else {
        len as u32
    };
    let mut header = TlsChunkHeader {
        // SAFETY: helpers without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ssl: key.ssl,
        call_seq,
        tgid: key.tgid as u32,
        cpu: unsafe { bpf_get_smp_processor_id() },
        call_len: if len > u64::from(u32::MAX) {
            u32::MAX
        } else {
            len as u32
        },
        captured_len,
        chunk_offset: 0,
        chunk_len: CHUNK_LEN,
        local_port: conn.local_port,
        remote_port: conn.remote_port,
        family: conn.family,
        direction: if write { TLS_SENT } else { TLS_RECEIVED },
        flags: if truncated { TLS_FLAG_TRUNCATED } else { 0 }
            | if midstream { TLS_FLAG_MIDSTREAM } else { 0 },
        _pad: 0,
        local_addr: conn.local_addr,
        remote_addr: conn.remote_addr,
    };
    let wakeup = wakeup_flags(
        &TLS_DATA,
        u64::from(captured_len) + core::mem::size_of::<TlsChunkHeader>() as u64,
        WAKEUP_BYTES.load(),
    );
    let src = UserBuffer(buf);
    let mut chunk = 1;
    while chunk < TLS_MAX_CHUNKS && captured_len - header.chunk_offset > CHUNK_LEN {
        if let Err(lost) = emit_full(&TLS_DATA, &header, &src, header.chunk_offset, wakeup) {
            return lost_call(lost);
        }
        header.chunk_offset += CHUNK_LEN;
        chunk += 1;
    }
    header.chunk_len = captured_len - header.chunk_offset;
    header.flags |= TLS_FLAG_LAST_CHUNK;
    let (offset, chunk_len) = (header.chunk_offset, header.chunk_len);
    if let Err(lost) = emit_last(&TLS_DATA, &header, &src, offset, chunk_len, wakeup) {
        return lost_call(lost);
    }
    count(TlsCounter::CallsCaptured);
    if truncated {
        count(TlsCounter::Truncated);
    }
}

#[inline(always)]
fn lost_call(lost: Lost) {
    count(match lost {
        Lost::RingFull => TlsCounter::DroppedRingFull,
        Lost::CopyFailed => TlsCounter::DroppedCopyFailed,
    });
}
