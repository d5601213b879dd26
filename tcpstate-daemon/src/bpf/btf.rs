//! Reads the running kernel's BTF (/sys/kernel/btf/vmlinux): the few types the daemon needs,
//! decoded on demand (`layout` finds the `struct sock` offsets the programs read in them), and
//! whether a tracepoint exists. Format: <https://www.kernel.org/doc/html/v6.18/bpf/btf.html>.

use std::path::Path;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read the kernel's BTF at {VMLINUX_BTF}: the kernel needs CONFIG_DEBUG_INFO_BTF=y \
         (every major distribution since 2020 has it), and in a container /sys must be mounted"
    )]
    Unreadable(#[source] std::io::Error),
    #[error("the kernel's BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error(
        "this kernel has no `sock:inet_sock_set_state` tracepoint (BTF type `{0}` is missing): \
         Linux 4.16 or newer is needed"
    )]
    MissingTracepoint(String),
    #[error("this kernel's `{0}` has no usable field `{1}` (an integer of the expected size)")]
    MissingField(&'static str, &'static str),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
pub(super) const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// A struct or union member.
#[derive(Debug, Clone, Copy)]
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

/// A type's fixed part.
#[derive(Debug, Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    /// Size for INT/STRUCT/UNION/ENUM, referenced type for modifiers and typedefs.
    size_or_type: u32,
    kind_flag: bool,
    vlen: usize,
    /// Where the kind-specific data starts in the type section.
    extra: usize,
}

/// The kernel's BTF, kept as the raw sections plus where each type starts, and decoded on
/// demand: the daemon reads a handful of types once at start-up, and decoding all of them
/// (tens of megabytes of small allocations) would dominate its peak memory.
pub struct KernelBtf {
    data: Vec<u8>,
    type_section: std::ops::Range<usize>,
    string_section: std::ops::Range<usize>,
    /// Offset of each type in the type section; index = type id - 1.
    offsets: Vec<u32>,
}

fn u32_in(section: &[u8], at: usize) -> Result<u32, BtfError> {
    section
        .get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated type"))
}

impl KernelBtf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(BtfError::Unreadable)?;
        Self::parse(data)
    }

    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            return Err(BtfError::Malformed("bad magic (or a big-endian kernel)"));
        }
        let header_len = u32_in(&data, 4)? as usize;
        let section = |off_at: usize, len_at: usize| -> Result<std::ops::Range<usize>, BtfError> {
            let start = header_len + u32_in(&data, off_at)? as usize;
            let end = start + u32_in(&data, len_at)? as usize;
            (end <= data.len())
                .then_some(start..end)
                .ok_or(BtfError::Malformed("section out of bounds"))
        };
        let type_section = section(8, 12)?;
        let string_section = section(16, 20)?;
        let types = &data[type_section.clone()];
        let mut offsets = Vec::new();
        let mut at = 0;
        while at < types.len() {
            offsets.push(at as u32);
            let info = u32_in(types, at + 4)?;
            u32_in(types, at + 8)?;
            let vlen = (info & 0xffff) as usize;
            at += 12
                + match (info >> 24) & 0x1f {
                    KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                    KIND_ARRAY => 12,
                    KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                    KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                    0 | 20.. => return Err(BtfError::Malformed("unknown type kind")),
                    _ => 0,
                };
        }
        if at != types.len() {
            return Err(BtfError::Malformed("truncated type"));
        }
        Ok(KernelBtf {
            data,
            type_section,
            string_section,
            offsets,
        })
    }

    fn types(&self) -> &[u8] {
        &self.data[self.type_section.clone()]
    }

    fn name(&self, offset: u32) -> &[u8] {
        let strings = &self.data[self.string_section.clone()];
        let tail = strings.get(offset as usize..).unwrap_or_default();
        &tail[..tail.iter().position(|&b| b == 0).unwrap_or(tail.len())]
    }

    fn get(&self, id: u32) -> Option<Type> {
        let at = *self.offsets.get((id as usize).checked_sub(1)?)? as usize;
        let types = self.types();
        // In bounds: `parse` checked every type's fixed part.
        let info = u32_in(types, at + 4).ok()?;
        Some(Type {
            name_off: u32_in(types, at).ok()?,
            kind: (info >> 24) & 0x1f,
            size_or_type: u32_in(types, at + 8).ok()?,
            kind_flag: info >> 31 == 1,
            vlen: (info & 0xffff) as usize,
            extra: at + 12,
        })
    }

    fn members(&self, ty: Type) -> impl Iterator<Item = Member> + '_ {
        let types = self.types();
        let count = if matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            ty.vlen
        } else {
            0
        };
        (0..count).filter_map(move |i| {
            let base = ty.extra + i * 12;
            let offset = u32_in(types, base + 8).ok()?;
            let (bit_offset, bitfield_size) = if ty.kind_flag {
                (offset & 0xff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            Some(Member {
                name_off: u32_in(types, base).ok()?,
                type_id: u32_in(types, base + 4).ok()?,
                bit_offset,
                bitfield_size,
            })
        })
    }

    /// The id of the type of `kind` named `name` (a scan: used a few times at start-up).
    pub(super) fn id(&self, kind: u32, name: &str) -> Option<u32> {
        (1..=self.offsets.len() as u32).find(|id| {
            self.get(*id)
                .is_some_and(|t| t.kind == kind && self.name(t.name_off) == name.as_bytes())
        })
    }

    /// Follows typedefs and modifiers to the type that has a size.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..32 {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of the integer field `name`, of `size` bytes, in the struct `struct_id`,
    /// looking through anonymous structs and unions (where `sock_common` keeps its ports).
    pub(super) fn int_field(&self, struct_id: u32, name: &str, size: u32) -> Option<u32> {
        let container = self.resolve(struct_id)?;
        for member in self.members(container) {
            let ty = self.resolve(member.type_id)?;
            let member_name = self.name(member.name_off);
            if member_name == name.as_bytes() {
                let is_int = matches!(ty.kind, KIND_INT | KIND_ENUM) && ty.size_or_type == size;
                let byte_aligned = member.bit_offset % 8 == 0;
                let plain = member.bitfield_size == 0 || member.bitfield_size == size * 8;
                return (is_int && byte_aligned && plain).then_some(member.bit_offset / 8);
            }
            if member_name.is_empty()
                && matches!(ty.kind, KIND_STRUCT | KIND_UNION)
                && let Some(inner) = self.int_field(member.type_id, name, size)
            {
                return Some(member.bit_offset / 8 + inner);
            }
        }
        None
    }

    #[cfg(test)]
    fn u16_field(&self, struct_id: u32, name: &str) -> Option<u32> {
        self.int_field(struct_id, name, 2)
    }

    /// Byte offset and type of the member `name` (any type) of a struct.
    pub(super) fn member_offset(&self, struct_id: u32, name: &str) -> Option<(u32, u32)> {
        let container = self.resolve(struct_id)?;
        self.members(container)
            .find(|m| self.name(m.name_off) == name.as_bytes() && m.bit_offset % 8 == 0)
            .map(|m| (m.bit_offset / 8, m.type_id))
    }

    /// The id of the tracepoint's `btf_trace_<name>` typedef; an error if the kernel has no
    /// such tracepoint.
    pub fn tracepoint_id(&self, name: &str) -> Result<u32, BtfError> {
        let typedef = format!("btf_trace_{name}");
        self.id(KIND_TYPEDEF, &typedef)
            .ok_or(BtfError::MissingTracepoint(typedef))
    }
}

/// A BTF blob holding the `btf_trace_<name>` typedef of each of `tracepoints` (name, kernel
/// id) under its id, every type before the last of them a nameless placeholder (a type's id is
/// its position). To load a BTF tracepoint program aya looks up that id and nothing else
/// (`BtfTracePoint::load`): aya's parse of the kernel's whole BTF took about 20 MB, the daemon's
/// peak memory, where this one takes 2 MB.
pub fn tracepoints_only(tracepoints: &[(&str, u32)]) -> Vec<u8> {
    let mut strings = vec![0u8];
    let mut named: Vec<(u32, u32)> = Vec::new();
    for (tracepoint, id) in tracepoints {
        if !named.iter().any(|(known, _)| known == id) {
            named.push((*id, strings.len() as u32));
            strings.extend_from_slice(format!("btf_trace_{tracepoint}").as_bytes());
            strings.push(0);
        }
    }
    let last = named.iter().map(|(id, _)| *id).max().unwrap_or(0);
    let mut types = Vec::with_capacity(last as usize * 12);
    for id in 1..=last {
        let (kind, name_off) = match named.iter().find(|(named_id, _)| *named_id == id) {
            Some((_, name_off)) => (KIND_TYPEDEF, *name_off),
            None => (KIND_FWD, 0),
        };
        // name_off, info (the kind in bits 24-28), referenced type (void).
        for word in [name_off, kind << 24, 0] {
            types.extend_from_slice(&word.to_le_bytes());
        }
    }
    encode(&types, &strings)
}

/// A BTF blob of a type section and a string section, behind a header.
fn encode(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut blob = Vec::with_capacity(24 + types.len() + strings.len());
    blob.extend_from_slice(&0xeb9f_u16.to_le_bytes());
    blob.extend_from_slice(&[1, 0]); // version, flags
    let (types_len, strings_len) = (types.len() as u32, strings.len() as u32);
    // hdr_len, type_off, type_len, str_off, str_len.
    for word in [24, 0, types_len, types_len, strings_len] {
        blob.extend_from_slice(&word.to_le_bytes());
    }
    blob.extend_from_slice(types);
    blob.extend_from_slice(strings);
    blob
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: u16 (id 1), struct inner { u16 a; u16 b; } anonymous (id 2),
    /// struct outer { u32-size int pad; <anon inner> at byte 4; u16 c at byte 8 } (id 3),
    /// u32 (id 4), and a bitfield struct (id 5).
    fn blob() -> Vec<u8> {
        let strings = b"\0u16\0a\0b\0outer\0c\0u32\0pad\0bits\0d\0".to_vec();
        let name = |s: &str, strings: &[u8]| -> u32 {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| words.iter().for_each(|w| types.extend(w.to_le_bytes()));
        // 1: int u16
        push(&[name("u16", &strings), KIND_INT << 24, 2, 16]);
        // 2: anonymous struct { a @0, b @16 bits }
        push(&[0, KIND_STRUCT << 24 | 2, 4]);
        push(&[name("a", &strings), 1, 0]);
        push(&[name("b", &strings), 1, 16]);
        // 3: struct outer { pad: u32 @0, anon @32, c @64 }
        push(&[name("outer", &strings), KIND_STRUCT << 24 | 3, 12]);
        push(&[name("pad", &strings), 4, 0]);
        push(&[0, 2, 32]);
        push(&[name("c", &strings), 1, 64]);
        // 4: int u32
        push(&[name("u32", &strings), KIND_INT << 24, 4, 32]);
        // 5: struct bits { d: u16 bitfield of 8 bits @8 } (kind_flag set)
        push(&[name("bits", &strings), 1 << 31 | KIND_STRUCT << 24 | 1, 2]);
        push(&[name("d", &strings), 1, 8 << 24 | 8]);
        encode(&types, &strings)
    }

    #[test]
    fn finds_fields_through_anonymous_members() {
        let btf = KernelBtf::parse(blob()).unwrap();
        let outer = btf.id(KIND_STRUCT, "outer").unwrap();
        assert_eq!(btf.u16_field(outer, "a"), Some(4));
        assert_eq!(btf.u16_field(outer, "b"), Some(6));
        assert_eq!(btf.u16_field(outer, "c"), Some(8));
        assert_eq!(
            btf.u16_field(outer, "pad"),
            None,
            "a u32 is not a u16 field"
        );
        assert_eq!(btf.u16_field(outer, "missing"), None);
        let bits = btf.id(KIND_STRUCT, "bits").unwrap();
        assert_eq!(
            btf.u16_field(bits, "d"),
            None,
            "8-bit bitfields cannot be read as u16"
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(KernelBtf::parse(vec![]).is_err());
        assert!(KernelBtf::parse(vec![0x9f, 0xeb, 1, 0, 24, 0]).is_err());
        let mut truncated = blob();
        truncated.truncate(40);
        assert!(KernelBtf::parse(truncated).is_err());
        assert!(KernelBtf::parse(blob()).unwrap().socket_layout().is_err());
    }
}
