//! Frames a pcap file through the capture pipeline and prints only the counters: the
//! pipeline's cost without printing or storing, for profiling.
//!
//! `cargo build --release --example frame_pcap -p capture-user`, then
//! `valgrind --tool=callgrind target/release/examples/frame_pcap trace.pcap 8080`
//! counts the instructions per packet of decode, reassembly and framing.

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let path = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: frame_pcap FILE.pcap [PORT ...]"))?;
    let ports = args
        .map(|p| capture_user::units::parse_port(&p).map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<Vec<u16>>>()?;
    let mut messages = 0u64;
    let framed = capture_user::files::frame_pcap(path.as_ref(), &ports, |batch| {
        messages += batch.len() as u64;
        batch.clear();
        Ok(())
    })?;
    println!("messages={messages} {}", framed.stats.to_line());
    if let Some(e) = framed.cut_short {
        return Err(e);
    }
    Ok(())
}
