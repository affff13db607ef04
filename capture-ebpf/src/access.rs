//! Byte access to the packet, the same for TC (`__sk_buff`) and XDP (`xdp_md`, multi-buffer
//! aware), and the two places headers are read from: the linear data directly, or a copy
//! made by the load helper when a header lies outside it.

use core::{cell::Cell, mem::MaybeUninit};

use aya_ebpf::{
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};

/// Byte access to the packet, the same for TC (`__sk_buff`) and XDP (`xdp_md`, multi-buffer
/// aware), so parsing and copying are written once.
pub(crate) trait PacketBytes {
    /// Start and end of the linear packet data the program may read directly.
    fn linear(&self) -> (usize, usize);
    /// Full packet length, including non-linear parts.
    fn len(&self) -> u32;
    /// Index of the interface the packet was seen on (read only for packets copied: it
    /// takes pointer loads through the device).
    fn ifindex(&self) -> u32;
    /// Copies `len` bytes from `offset` into `dst`; false if out of bounds.
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool;
}

/// Where the parser reads headers from.
pub(crate) trait Headers {
    /// The `N` bytes at `offset`, or `None` when this source cannot give them. `buf` is room
    /// for a copy, used only by sources that copy.
    fn read<'b, const N: usize>(
        &'b self,
        offset: u32,
        buf: &'b mut MaybeUninit<[u8; N]>,
    ) -> Option<&'b [u8; N]>;
}

/// Headers read straight from the linear packet data (`data..data_end`), where they nearly
/// always are: no helper call, no copy, and only the bytes the parser looks at are loaded.
/// A read outside it fails and sets `missed`, so the caller parses again with [`Loaded`].
pub(crate) struct Direct {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) missed: Cell<bool>,
}

impl Direct {
    #[inline(always)]
    pub(crate) fn new<P: PacketBytes>(pkt: &P) -> Self {
        let (start, end) = pkt.linear();
        Self {
            start,
            end,
            missed: Cell::new(false),
        }
    }
}

impl Headers for Direct {
    #[inline(always)]
    fn read<'b, const N: usize>(
        &'b self,
        offset: u32,
        _buf: &'b mut MaybeUninit<[u8; N]>,
    ) -> Option<&'b [u8; N]> {
        // The bound lets the verifier accept a variable offset into the packet; headers
        // further in (only behind many IPv6 extension headers) are left to the helper.
        if offset <= MAX_DIRECT_OFFSET {
            let at = self.start + offset as usize;
            if at + N <= self.end {
                // SAFETY: [at, at + N) lies inside the linear packet data, checked against
                // data_end just above (the check the verifier wants before a packet read);
                // nothing writes the packet while the program runs, and [u8; N] has no
                // alignment requirement.
                return Some(unsafe { &*(at as *const [u8; N]) });
            }
        }
        self.missed.set(true);
        None
    }
}

/// Headers copied out with the load helper: any part of the packet, linear or not.
pub(crate) struct Loaded<'a, P>(pub(crate) &'a P);

impl<P: PacketBytes> Headers for Loaded<'_, P> {
    #[inline(always)]
    fn read<'b, const N: usize>(
        &'b self,
        offset: u32,
        buf: &'b mut MaybeUninit<[u8; N]>,
    ) -> Option<&'b [u8; N]> {
        if self.0.load(offset, buf.as_mut_ptr().cast(), N as u32) {
            // SAFETY: the helper succeeded, so it wrote all N bytes.
            Some(unsafe { buf.assume_init_ref() })
        } else {
            None
        }
    }
}

/// Largest header offset read directly from the packet (well under the verifier's 64 KiB
/// limit on packet offsets).
pub(crate) const MAX_DIRECT_OFFSET: u32 = 0x3FFF;

pub(crate) struct Skb<'a>(pub(crate) &'a TcContext);

impl PacketBytes for Skb<'_> {
    #[inline(always)]
    fn linear(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer handed to the program is valid for its whole run.
        unsafe { (*self.0.skb.skb).ifindex }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: the context pointer handed to the program is valid for its whole run.
        unsafe { (*self.0.skb.skb).len }
    }
    #[inline(always)]
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks bounds itself; dst points at `len` writable bytes.
        unsafe { bpf_skb_load_bytes(self.0.skb.skb as *const _, offset, dst as *mut _, len) == 0 }
    }
}

pub(crate) struct Xdp<'a>(pub(crate) &'a XdpContext);

impl PacketBytes for Xdp<'_> {
    #[inline(always)]
    fn linear(&self) -> (usize, usize) {
        (self.0.data(), self.0.data_end())
    }
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        // SAFETY: the context pointer handed to the program is valid for its whole run.
        unsafe { (*self.0.ctx).ingress_ifindex }
    }
    #[inline(always)]
    fn len(&self) -> u32 {
        // SAFETY: valid context pointer; the helper covers fragments of multi-buffer packets.
        unsafe { bpf_xdp_get_buff_len(self.0.ctx) as u32 }
    }
    #[inline(always)]
    fn load(&self, offset: u32, dst: *mut u8, len: u32) -> bool {
        // SAFETY: the helper checks bounds itself; dst points at `len` writable bytes.
        unsafe { bpf_xdp_load_bytes(self.0.ctx, offset, dst as *mut _, len) == 0 }
    }
}
