//! Just enough of the BPF Type Format to find where kernel structure fields are: the TLS
//! probes walk task → files → socket with `bpf_probe_read_kernel`, and the offsets must be the
//! running kernel's. `/sys/kernel/btf/vmlinux` describes them; no headers or compiler needed.

use capture_common::tls::KernelOffsets;

/// Where the running kernel describes its types.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why offsets could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {VMLINUX_BTF}: {0}; --tls needs a kernel built with CONFIG_DEBUG_INFO_BTF")]
    Read(#[from] std::io::Error),
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no field {field} in struct {strukt}")]
    MissingField { strukt: String, field: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u8 = 1;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// One type: its kind, name and where its members are.
#[derive(Clone, Copy)]
struct Type {
    kind: u8,
    kind_flag: bool,
    name: u32,
    vlen: u32,
    /// Size or referenced type.
    size_type: u32,
    /// Where what follows the common part starts in the type section.
    extra: usize,
}

/// A parsed BTF blob (types indexed by id, id 0 is void).
pub struct Btf {
    types: Vec<Type>,
    type_section: Vec<u8>,
    strings: Vec<u8>,
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

impl Btf {
    /// Parses a little-endian BTF blob.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let bad = BtfError::Malformed;
        let magic = bytes.get(0..2).ok_or(bad("short header"))?;
        if u16::from_le_bytes([magic[0], magic[1]]) != MAGIC {
            return Err(bad("bad magic (or not little-endian)"));
        }
        let field = |at| u32_at(bytes, at).ok_or(bad("short header"));
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        let section = |off: usize, len: usize| {
            bytes
                .get(hdr_len + off..hdr_len + off + len)
                .ok_or(bad("section past the end"))
        };
        let type_section = section(type_off, type_len)?.to_vec();
        let strings = section(str_off, str_len)?.to_vec();
        let mut types = vec![Type {
            kind: 0,
            kind_flag: false,
            name: 0,
            vlen: 0,
            size_type: 0,
            extra: 0,
        }];
        let mut at = 0;
        while at < type_section.len() {
            let word = |i: usize| u32_at(&type_section, at + 4 * i).ok_or(bad("type cut short"));
            let (name, info, size_type) = (word(0)?, word(1)?, word(2)?);
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = info & 0xffff;
            let extra = at + 12;
            let extra_len = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                0 | 20.. => return Err(bad("unknown type kind")),
                _ => 0,
            };
            types.push(Type {
                kind,
                kind_flag: info >> 31 == 1,
                name,
                vlen,
                size_type,
                extra,
            });
            at = extra + extra_len;
        }
        Ok(Self {
            types,
            type_section,
            strings,
        })
    }

    /// The running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::parse(&std::fs::read(VMLINUX_BTF)?)
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        &rest[..end]
    }

    /// The struct named `name` that has members (a forward declaration has none).
    fn struct_named(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT && t.vlen > 0 && self.name(t.name) == name.as_bytes()
            })
            .map(|i| i as u32)
    }

    /// `id` with typedefs and qualifiers peeled off.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_type
                }
                _ => break,
            }
        }
        id
    }

    /// (byte offset, type) of member `name` of struct or union `id`, looking inside
    /// anonymous struct and union members as C does.
    fn member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32)> {
        let t = self.types.get(id as usize)?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..t.vlen as usize {
            let at = t.extra + 12 * i;
            let (m_name, m_type, m_off) = (
                u32_at(&self.type_section, at)?,
                u32_at(&self.type_section, at + 4)?,
                u32_at(&self.type_section, at + 8)?,
            );
            let bits = if t.kind_flag {
                m_off & 0xff_ffff
            } else {
                m_off
            };
            let member_name = self.name(m_name);
            if member_name == name.as_bytes() {
                return Some((bits / 8, m_type));
            }
            if member_name.is_empty()
                && let Some((inner, ty)) = self.member(self.resolve(m_type), name, depth + 1)
            {
                return Some((bits / 8 + inner, ty));
            }
        }
        None
    }

    /// Byte offset of `path` (fields separated by dots, e.g. `__sk_common.skc_family`) in
    /// struct `strukt`.
    pub fn offset_of(&self, strukt: &str, path: &str) -> Result<u32, BtfError> {
        let missing = || BtfError::MissingField {
            strukt: strukt.to_string(),
            field: path.to_string(),
        };
        let mut id = self.struct_named(strukt).ok_or_else(missing)?;
        let mut total = 0;
        for field in path.split('.') {
            let (offset, ty) = self.member(id, field, 0).ok_or_else(missing)?;
            total += offset;
            id = self.resolve(ty);
        }
        Ok(total)
    }

    /// Byte offset of `field`, a direct member of struct `strukt` that is a whole 16-bit
    /// integer (not a bitfield, as `sock.sk_protocol` was before Linux 5.6).
    pub fn plain_u16(&self, strukt: &str, field: &str) -> Option<u32> {
        let t = self.types.get(self.struct_named(strukt)? as usize)?;
        (0..t.vlen as usize).find_map(|i| {
            let at = t.extra + 12 * i;
            if self.name(u32_at(&self.type_section, at)?) != field.as_bytes() {
                return None;
            }
            let m_off = u32_at(&self.type_section, at + 8)?;
            let (bitfield, bits) = match t.kind_flag {
                true => (m_off >> 24, m_off & 0xff_ffff),
                false => (0, m_off),
            };
            let ty = self
                .types
                .get(self.resolve(u32_at(&self.type_section, at + 4)?) as usize)?;
            (bitfield == 0 && bits % 8 == 0 && ty.kind == KIND_INT && ty.size_type == 2)
                .then_some(bits / 8)
        })
    }

    /// Every offset the TLS probes walk with.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let sk = |field: &str| self.offset_of("sock", &format!("__sk_common.{field}"));
        Ok(KernelOffsets {
            task_files: self.offset_of("task_struct", "files")?,
            files_fdt: self.offset_of("files_struct", "fdt")?,
            fdtable_max_fds: self.offset_of("fdtable", "max_fds")?,
            fdtable_fd: self.offset_of("fdtable", "fd")?,
            file_inode: self.offset_of("file", "f_inode")?,
            file_private_data: self.offset_of("file", "private_data")?,
            inode_mode: self.offset_of("inode", "i_mode")?,
            socket_sk: self.offset_of("socket", "sk")?,
            sk_family: sk("skc_family")?,
            sk_num: sk("skc_num")?,
            sk_dport: sk("skc_dport")?,
            sk_rcv_saddr: sk("skc_rcv_saddr")?,
            sk_daddr: sk("skc_daddr")?,
            sk_v6_rcv_saddr: sk("skc_v6_rcv_saddr")?,
            sk_v6_daddr: sk("skc_v6_daddr")?,
            sk_protocol: self
                .plain_u16("sock", "sk_protocol")
                .unwrap_or(capture_common::tls::NO_OFFSET),
            valid: 1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob with `struct outer { int a; union { int b; struct { int c; }; }; }` laid out
    /// as a, then the union at 8 (c at 8 + 4 inside its struct).
    fn sample() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0int\0".to_vec();
        let (outer, a, b, c, int) = (1u32, 7, 9, 11, 13);
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int
        push(&[int, (KIND_INT as u32) << 24, 4, 32]);
        // 2: struct { int c; } (anonymous), c at bit 32
        push(&[0, (KIND_STRUCT as u32) << 24 | 1, 8, c, 1, 32]);
        // 3: union { int b; struct 2; } (anonymous)
        push(&[0, (KIND_UNION as u32) << 24 | 2, 8, b, 1, 0, 0, 2, 0]);
        // 4: struct outer { int a; union 3 at byte 8; }
        push(&[outer, (KIND_STRUCT as u32) << 24 | 2, 16, a, 1, 0, 0, 3, 64]);
        let mut blob = Vec::new();
        blob.extend_from_slice(&MAGIC.to_le_bytes());
        blob.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn fields_inside_anonymous_unions_and_structs_are_found_with_their_offsets() {
        let btf = Btf::parse(&sample()).expect("parses");
        assert_eq!(btf.offset_of("outer", "a").ok(), Some(0));
        assert_eq!(btf.offset_of("outer", "b").ok(), Some(8));
        assert_eq!(btf.offset_of("outer", "c").ok(), Some(12));
        let missing = btf.offset_of("outer", "d").map_err(|e| e.to_string());
        assert_eq!(
            missing,
            Err("the kernel's BTF has no field d in struct outer".to_string())
        );
        assert!(btf.offset_of("nosuch", "a").is_err());
        // A 4-byte int is not a plain u16; nested and unknown fields are not direct members.
        assert_eq!(btf.plain_u16("outer", "a"), None);
        assert_eq!(btf.plain_u16("outer", "c"), None);
        assert_eq!(btf.plain_u16("nosuch", "a"), None);
    }

    #[test]
    fn truncated_or_foreign_blobs_are_refused_not_misread() {
        let blob = sample();
        assert!(Btf::parse(&blob[..30]).is_err());
        let mut wrong = blob.clone();
        wrong[0] = 0;
        assert!(Btf::parse(&wrong).is_err());
    }

    #[test]
    fn the_running_kernels_offsets_are_found_and_plausible() {
        let btf = Btf::from_kernel().expect("this machine's kernel has BTF");
        let off = btf.kernel_offsets().expect("every field the probes walk");
        // sock_common starts struct sock; its family, ports and addresses lie in its first
        // bytes, IPv6 addresses after the IPv4 ones.
        assert!(off.sk_daddr < 8 && off.sk_rcv_saddr < 8, "{off:?}");
        assert!(off.sk_dport < 16 && off.sk_num < 16 && off.sk_family < 24);
        assert!(off.sk_v6_daddr > off.sk_family);
        assert_eq!(off.valid, 1);
        assert!(off.task_files > 0 && off.file_private_data > 0);
        // sk_protocol is a plain u16 of struct sock itself, after sock_common.
        assert!(off.sk_protocol > off.sk_v6_daddr, "{off:?}");
        assert_ne!(off.sk_protocol, capture_common::tls::NO_OFFSET);
    }
}
