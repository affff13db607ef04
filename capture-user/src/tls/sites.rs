//! Where the read and write probes go on a libssl. A uprobe on an instruction costs a trap,
//! and a second one when the kernel cannot emulate that instruction and must single-step
//! it out of line. Debian's `SSL_read` and `SSL_write` begin with `sub $0x18,%rsp`, which it
//! cannot emulate, and on a VM each debug trap is a hypervisor exit: probing them took three
//! quarters of an HTTPS server's throughput here. `SSL_read` and `SSL_read_ex` (and the
//! writes) are thin wrappers around one internal function (OpenSSL's `ssl_read_internal`,
//! `ssl_write_internal`) that has no exported symbol but begins with `push`, which the
//! kernel emulates. So the wrappers' code is decoded to find the function they all call,
//! and the read and write probes go there when every wrapper agrees on it, the out-pointer
//! argument is found, and the function begins with a push. Otherwise the exported functions
//! are probed, as before. Sans-IO: fed the library's bytes.

use capture_common::tls::TlsCall;
use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use object::{Object, ObjectSection, ObjectSymbol};

/// How far into a wrapper its call to the internal function is looked for.
const WRAPPER_INSTRUCTIONS: usize = 32;

/// An internal function to probe instead of the exported ones that call it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InternalSite {
    /// Its kind for the probes (which argument points at the byte count).
    pub call: TlsCall,
    /// The probed instruction's offset in the file (what uprobes attach by).
    pub file_offset: u64,
    /// Its virtual address, for logs.
    pub address: u64,
}

/// The internal read and write functions of one libssl, where found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InternalSites {
    pub read: Option<InternalSite>,
    pub write: Option<InternalSite>,
}

/// Finds the internal read and write functions of the libssl in `elf`. Anything unexpected
/// (not an x86-64 ELF, a wrapper missing or calling elsewhere) leaves that direction to
/// the exported functions.
pub fn internal_sites(elf: &[u8]) -> InternalSites {
    let Ok(file) = object::File::parse(elf) else {
        return InternalSites::default();
    };
    if file.architecture() != object::Architecture::X86_64 {
        return InternalSites::default();
    }
    let library = Library { file: &file };
    InternalSites {
        read: library.site(&["SSL_read", "SSL_read_ex"], |arg| match arg {
            3 => Some(TlsCall::ReadInternal),
            _ => None,
        }),
        write: library.site(
            &["SSL_write", "SSL_write_ex", "SSL_write_ex2"],
            |arg| match arg {
                3 => Some(TlsCall::WriteInternal),
                4 => Some(TlsCall::WriteInternalFlags),
                _ => None,
            },
        ),
    }
}

struct Library<'a, 'data> {
    file: &'a object::File<'data>,
}

impl Library<'_, '_> {
    /// The internal function the `wrappers` share (the first, `SSL_read` or `SSL_write`,
    /// names it and says where the byte count goes; every other present one calls it or
    /// another wrapper, and at least one calls it), with `kind` naming the probe kind for
    /// the out-pointer argument's index.
    fn site(
        &self,
        wrappers: &[&str],
        kind: impl Fn(usize) -> Option<TlsCall>,
    ) -> Option<InternalSite> {
        let addresses: Vec<Option<u64>> = wrappers.iter().map(|w| self.symbol(w)).collect();
        let first = self.first_call(addresses[0]?)?;
        let call = kind(first.out_pointer_arg?)?;
        let mut agreeing = 0;
        for address in addresses[1..].iter().flatten() {
            let target = self.first_call(*address)?.target;
            if target == first.target {
                agreeing += 1;
            } else if !addresses.contains(&Some(target)) {
                return None;
            }
        }
        if agreeing == 0 {
            return None;
        }
        let (code, section_address, section_offset) = self.code_at(first.target)?;
        let address = push_site(code, first.target)?;
        Some(InternalSite {
            call,
            file_offset: address - section_address + section_offset,
            address,
        })
    }

    fn symbol(&self, name: &str) -> Option<u64> {
        self.file
            .dynamic_symbols()
            .find(|s| s.is_definition() && s.name() == Ok(name))
            .map(|s| s.address())
    }

    fn first_call(&self, address: u64) -> Option<WrapperCall> {
        let (code, _, _) = self.code_at(address)?;
        let call = first_call(code, address)?;
        // The target must be code of this library (not a PLT stub for another library's
        // function, which sits in its own section).
        self.code_at(call.target).map(|_| call)
    }

    /// The bytes of the `.text` section from `address` on, with the section's address and
    /// file offset.
    fn code_at(&self, address: u64) -> Option<(&[u8], u64, u64)> {
        let text = self.file.section_by_name(".text")?;
        let (start, size) = (text.address(), text.size());
        if address < start || address >= start + size {
            return None;
        }
        let data = text.data().ok()?;
        let (offset, _) = text.file_range()?;
        let from = usize::try_from(address - start).ok()?;
        Some((data.get(from..)?, start, offset))
    }
}

/// A wrapper's call to the function doing its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrapperCall {
    /// The called function's address.
    pub target: u64,
    /// The argument (0-based) the wrapper set to point into its own stack before the call:
    /// where the callee writes the byte count (`&readbytes`, `&written`).
    pub out_pointer_arg: Option<usize>,
}

/// The first direct call in the function at `address` (whose code starts `code`), or its
/// tail call (a direct `jmp` before any call: OpenSSL 3.3's `SSL_write_ex` jumps to
/// `SSL_write_ex2`), looked for up to a return.
pub fn first_call(code: &[u8], address: u64) -> Option<WrapperCall> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    let mut out_pointer_arg = None;
    for _ in 0..WRAPPER_INSTRUCTIONS {
        if !decoder.can_decode() {
            return None;
        }
        decoder.decode_out(&mut instruction);
        match instruction.mnemonic() {
            Mnemonic::INVALID | Mnemonic::Ret => return None,
            Mnemonic::Call | Mnemonic::Jmp => {
                if instruction.op0_kind() != OpKind::NearBranch64 {
                    return None;
                }
                return Some(WrapperCall {
                    target: instruction.near_branch_target(),
                    out_pointer_arg,
                });
            }
            Mnemonic::Mov | Mnemonic::Lea
                if instruction.op0_kind() == OpKind::Register
                    && (instruction.op1_kind() == OpKind::Register
                        && instruction.op1_register() == Register::RSP
                        || instruction.mnemonic() == Mnemonic::Lea
                            && instruction.memory_base() == Register::RSP) =>
            {
                if let Some(arg) = argument_index(instruction.op0_register()) {
                    out_pointer_arg = Some(arg);
                }
            }
            // Anything else writing the register holding the pointer replaces it.
            Mnemonic::Mov
            | Mnemonic::Movsxd
            | Mnemonic::Movzx
            | Mnemonic::Lea
            | Mnemonic::Xor
            | Mnemonic::And
            | Mnemonic::Or
            | Mnemonic::Add
            | Mnemonic::Sub
            | Mnemonic::Pop
                if instruction.op0_kind() == OpKind::Register
                    && argument_index(instruction.op0_register()).is_some()
                    && argument_index(instruction.op0_register()) == out_pointer_arg =>
            {
                out_pointer_arg = None;
            }
            _ => {}
        }
    }
    None
}

/// The address to probe in the function at `address`: its first instruction when that is
/// a `push` of a register (which the kernel emulates), after an `endbr64` if there is one.
pub fn push_site(code: &[u8], address: u64) -> Option<u64> {
    let mut decoder = Decoder::with_ip(64, code, address, DecoderOptions::NONE);
    let mut instruction = Instruction::default();
    for _ in 0..2 {
        if !decoder.can_decode() {
            return None;
        }
        decoder.decode_out(&mut instruction);
        match instruction.mnemonic() {
            Mnemonic::Endbr64 if instruction.ip() == address => continue,
            Mnemonic::Push if instruction.op0_kind() == OpKind::Register => {
                return Some(instruction.ip());
            }
            _ => return None,
        }
    }
    None
}

/// The System V argument (0-based, the first six) a register or its 32-bit half carries.
fn argument_index(register: Register) -> Option<usize> {
    const ARGUMENTS: [(Register, Register); 6] = [
        (Register::RDI, Register::EDI),
        (Register::RSI, Register::ESI),
        (Register::RDX, Register::EDX),
        (Register::RCX, Register::ECX),
        (Register::R8, Register::R8D),
        (Register::R9, Register::R9D),
    ];
    ARGUMENTS
        .iter()
        .position(|(full, half)| *full == register || *half == register)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Debian bookworm's OpenSSL 3.0 SSL_read at 0x35430:
    //   sub $0x18,%rsp; mov %fs:0x28,%rax; mov %rax,0x8(%rsp); xor %eax,%eax;
    //   test %edx,%edx; js +0x2f; mov %rsp,%rcx; movslq %edx,%rdx; call 0x35290
    const SSL_READ: &[u8] = &[
        0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, 0x48, 0x89,
        0x44, 0x24, 0x08, 0x31, 0xc0, 0x85, 0xd2, 0x78, 0x2f, 0x48, 0x89, 0xe1, 0x48, 0x63, 0xd2,
        0xe8, 0x3d, 0xfe, 0xff, 0xff,
    ];
    // SSL_read_ex at 0x354c0: sub $0x8,%rsp; call 0x35290 (its own rcx passes through).
    const SSL_READ_EX: &[u8] = &[0x48, 0x83, 0xec, 0x08, 0xe8, 0xc7, 0xfd, 0xff, 0xff];

    #[test]
    fn the_wrappers_call_and_out_pointer_are_decoded() {
        assert_eq!(
            first_call(SSL_READ, 0x35430),
            Some(WrapperCall {
                target: 0x35290,
                out_pointer_arg: Some(3)
            })
        );
        assert_eq!(
            first_call(SSL_READ_EX, 0x354c0),
            Some(WrapperCall {
                target: 0x35290,
                out_pointer_arg: None
            })
        );
    }

    #[test]
    fn an_out_pointer_in_r8_is_the_fifth_argument_and_an_overwritten_one_is_dropped() {
        // lea 0x8(%rsp),%r8; xor %ecx,%ecx; call +0
        let five = [0x4c, 0x8d, 0x44, 0x24, 0x08, 0x31, 0xc9, 0xe8, 0, 0, 0, 0];
        assert_eq!(
            first_call(&five, 0x1000).map(|c| c.out_pointer_arg),
            Some(Some(4))
        );
        // mov %rsp,%rcx; xor %ecx,%ecx; call +0
        let gone = [0x48, 0x89, 0xe1, 0x31, 0xc9, 0xe8, 0, 0, 0, 0];
        assert_eq!(
            first_call(&gone, 0x1000).map(|c| c.out_pointer_arg),
            Some(None)
        );
    }

    #[test]
    fn a_tail_call_is_the_wrappers_call_and_carries_the_pointer_it_moved() {
        // OpenSSL 3.3's SSL_write_ex at 0x3bac0: mov %rcx,%r8; xor %ecx,%ecx; jmp 0x3baa0
        // (SSL_write_ex2). The pointer moved from rcx is not the stack's: not an out pointer.
        let code = [0x49, 0x89, 0xc8, 0x31, 0xc9, 0xe9, 0xd6, 0xff, 0xff, 0xff];
        assert_eq!(
            first_call(&code, 0x3bac0),
            Some(WrapperCall {
                target: 0x3baa0,
                out_pointer_arg: None
            })
        );
    }

    #[test]
    fn no_call_before_a_return_or_jump_or_in_garbage_is_no_site() {
        // ret
        assert_eq!(first_call(&[0xc3, 0xe8, 0, 0, 0, 0], 0), None);
        // an indirect call or jump: call *%rax, jmp *%rax
        assert_eq!(first_call(&[0xff, 0xd0], 0), None);
        assert_eq!(first_call(&[0xff, 0xe0], 0), None);
        // cut short, and not code
        assert_eq!(first_call(&SSL_READ[..20], 0), None);
        assert_eq!(first_call(&[0x0f, 0x0b, 0x0f, 0xff], 0), None);
    }

    #[test]
    fn the_probe_goes_on_a_leading_push_after_an_optional_endbr64() {
        // push %r13; push %r12
        assert_eq!(push_site(&[0x41, 0x55, 0x41, 0x54], 0x35290), Some(0x35290));
        // endbr64; push %rbp
        assert_eq!(
            push_site(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55], 0x2000),
            Some(0x2004)
        );
        // sub $0x18,%rsp: single-stepped, no better than the exported function
        assert_eq!(push_site(&[0x48, 0x83, 0xec, 0x18], 0x2000), None);
        // endbr64; endbr64; push: only one endbr64 is skipped
        let two = [0xf3, 0x0f, 0x1e, 0xfa, 0xf3, 0x0f, 0x1e, 0xfa, 0x55];
        assert_eq!(push_site(&two, 0x2000), None);
    }

    #[test]
    fn what_is_not_an_x86_64_elf_has_no_internal_sites() {
        assert_eq!(internal_sites(b"not an elf"), InternalSites::default());
        assert_eq!(internal_sites(&[]), InternalSites::default());
    }

    #[test]
    fn this_hosts_libssl_has_internal_read_and_write_sites_starting_with_a_push() {
        let path = "/usr/lib/x86_64-linux-gnu/libssl.so.3";
        let elf = std::fs::read(path).expect("the host's libssl (the TLS tests need it too)");
        let sites = internal_sites(&elf);
        let (read, write) = (sites.read.expect("read"), sites.write.expect("write"));
        assert_eq!(read.call, TlsCall::ReadInternal);
        assert!(matches!(
            write.call,
            TlsCall::WriteInternal | TlsCall::WriteInternalFlags
        ));
        assert_ne!(read.address, write.address);
        for site in [read, write] {
            let at = usize::try_from(site.file_offset).expect("offset");
            let code = &elf[at..at + 8];
            assert_eq!(
                push_site(code, site.address),
                Some(site.address),
                "{site:?}"
            );
        }
    }
}
