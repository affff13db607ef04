use which::which;

/// The eBPF crate has an undeclared dependency on the `bpf-linker` binary: rebuild whenever it
/// changes (for example after `cargo xtask setup` rebuilt it for a new nightly LLVM).
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!("cargo:warning=bpf-linker not found on PATH; run `cargo xtask setup`"),
    }
}
