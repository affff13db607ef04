//! Synthetic captures of known traffic, written as a pcap of Ethernet/IPv4/TCP frames as
//! tcpdump would: a handshake per connection, then each exchange's request and response as
//! segments with running sequence numbers. Tests import them (`capture import`) to get
//! recordings of any size whose every request is known in advance, then check what a replay
//! sends against them.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

/// Server address of every synthetic connection.
pub const SERVER_IP: [u8; 4] = [10, 9, 0, 2];

/// One exchange: a request on recorded connection `conn` at `ts_us`, answered 100 µs later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub conn: u32,
    pub ts_us: u64,
    pub method: &'static str,
    pub uri: String,
    pub body: Vec<u8>,
}

impl Exchange {
    /// The request as sent.
    pub fn request(&self) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\nHost: synth\r\n", self.method, self.uri);
        if !self.body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";

struct Conn {
    client_seq: u32,
    server_seq: u32,
}

/// Writes a pcap of `exchanges` (in time order) to `server_port`.
pub fn write_pcap(
    path: &Path,
    server_port: u16,
    exchanges: impl IntoIterator<Item = Exchange>,
) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    // Classic pcap, microseconds, Ethernet.
    out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
    out.write_all(&2u16.to_le_bytes())?;
    out.write_all(&4u16.to_le_bytes())?;
    out.write_all(&[0u8; 8])?;
    out.write_all(&65535u32.to_le_bytes())?;
    out.write_all(&1u32.to_le_bytes())?;
    let mut conns: std::collections::HashMap<u32, Conn> = std::collections::HashMap::new();
    for e in exchanges {
        let client_port = 20000 + (e.conn % 40000) as u16;
        let seg = Segment {
            client_ip: [10, 9, (e.conn / 40000 % 250) as u8, 1],
            client_port,
            server_port,
        };
        let conn = conns.entry(e.conn).or_insert_with(|| Conn {
            client_seq: 1000,
            server_seq: 5000,
        });
        if conn.client_seq == 1000 {
            let t = e.ts_us.saturating_sub(300);
            seg.write(&mut out, t, true, 999, 0, SYN, &[])?;
            seg.write(&mut out, t + 100, false, 4999, 1000, SYN | ACK, &[])?;
            seg.write(&mut out, t + 200, true, 1000, 5000, ACK, &[])?;
        }
        let request = e.request();
        for (i, chunk) in request.chunks(1400).enumerate() {
            let (c, s) = (conn.client_seq, conn.server_seq);
            seg.write(&mut out, e.ts_us + i as u64, true, c, s, PSH | ACK, chunk)?;
            conn.client_seq = c.wrapping_add(chunk.len() as u32);
        }
        let (c, s) = (conn.client_seq, conn.server_seq);
        seg.write(&mut out, e.ts_us + 100, false, s, c, PSH | ACK, RESPONSE)?;
        conn.server_seq = s.wrapping_add(RESPONSE.len() as u32);
    }
    out.flush()?;
    Ok(())
}

const SYN: u8 = 0x02;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

struct Segment {
    client_ip: [u8; 4],
    client_port: u16,
    server_port: u16,
}

impl Segment {
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        out: &mut impl Write,
        ts_us: u64,
        from_client: bool,
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> Result<()> {
        let (src, dst, sport, dport) = if from_client {
            (
                self.client_ip,
                SERVER_IP,
                self.client_port,
                self.server_port,
            )
        } else {
            (
                SERVER_IP,
                self.client_ip,
                self.server_port,
                self.client_port,
            )
        };
        let len = 14 + 20 + 20 + payload.len();
        out.write_all(&((ts_us / 1_000_000) as u32).to_le_bytes())?;
        out.write_all(&((ts_us % 1_000_000) as u32).to_le_bytes())?;
        out.write_all(&(len as u32).to_le_bytes())?;
        out.write_all(&(len as u32).to_le_bytes())?;
        // Ethernet.
        out.write_all(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00])?;
        // IPv4, no options, DF.
        let total = (20 + 20 + payload.len()) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        out.write_all(&ip)?;
        // TCP, no options (checksum left 0, as offloaded captures show it).
        let mut tcp = [0u8; 20];
        tcp[0..2].copy_from_slice(&sport.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[4..8].copy_from_slice(&seq.to_be_bytes());
        tcp[8..12].copy_from_slice(&ack.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
        out.write_all(&tcp)?;
        out.write_all(payload)?;
        Ok(())
    }
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// `conns` keep-alive connections taking turns, `total` exchanges `gap_us` apart, a POST with
/// a body every `post_every` (0: none), URIs unique (`/index.html?c=CONN&i=N`).
pub fn round_robin(
    conns: u32,
    total: u64,
    start_us: u64,
    gap_us: u64,
    post_every: u64,
) -> impl Iterator<Item = Exchange> {
    (0..total).map(move |i| {
        let conn = (i % u64::from(conns)) as u32 + 1;
        let post = post_every > 0 && i % post_every == post_every - 1;
        Exchange {
            conn,
            ts_us: start_us + i * gap_us,
            method: if post { "POST" } else { "GET" },
            uri: if post {
                format!("/upload?c={conn}&i={i}")
            } else {
                format!("/index.html?c={conn}&i={i}")
            },
            body: if post {
                format!("body-{i}-").repeat(20).into_bytes()
            } else {
                Vec::new()
            },
        }
    })
}
