//! The daemon's own cumulative figures (those it derives from sock_diag polls, see
//! `crate::kept`), kept in a BPF hash map pinned beside the kernel's maps: one lifetime, one
//! lock and one layout version for everything a restart adopts, and no other directory to
//! mount. Two copies, so that a daemon killed mid-write leaves the last whole one: a write fills
//! the copy not in use, chunk by chunk, then points the header at it (one map update, which a
//! signal cannot split).

use std::{ffi::CStr, io, path::Path};

use aya::maps::{HashMap, MapData, MapError};

use crate::sys;

/// Bytes per map value.
const CHUNK: usize = 4096;
/// Chunks per copy: 64 MiB, far above a busy host's figures (about 40 bytes per timewait
/// socket). Allocated only as used (`BPF_F_NO_PREALLOC`).
const MAX_CHUNKS: u32 = 16384;
/// The header's key; a chunk's is its copy in bit 30 and its index.
const HEADER: u32 = u32::MAX;
const COPY_BIT: u32 = 1 << 30;
/// Marks a header this code wrote (a map pinned under the name by anything else has none).
const MAGIC: u64 = u64::from_le_bytes(*b"tcpstfig");

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_F_NO_PREALLOC: u32 = 1;
const NAME: &CStr = c"tcpstate_daemon";

/// Why the kept figures could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read the pinned map")]
    Map(#[from] MapError),
    #[error("the pinned map holds no figures tcpstated wrote (its header is missing or foreign)")]
    NoHeader,
    #[error("the figures' checksum does not match: a copy was damaged")]
    Damaged,
}

pub struct FigureStore {
    map: HashMap<MapData, u32, [u8; CHUNK]>,
    /// The copy the header points at.
    current: u32,
}

impl FigureStore {
    /// A new, empty store, pinned at `path`.
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let fd = sys::bpf::create_map(
            BPF_MAP_TYPE_HASH,
            size_of::<u32>() as u32,
            CHUNK as u32,
            2 * MAX_CHUNKS + 1,
            BPF_F_NO_PREALLOC,
            NAME,
        )?;
        let data = MapData::from_fd(fd)?;
        data.pin(path)?;
        let map = HashMap::try_from(aya::maps::Map::HashMap(data))?;
        Ok(FigureStore { map, current: 1 })
    }

    /// The store pinned at `path`.
    pub fn open(path: &Path) -> Result<Self, MapError> {
        let data = MapData::from_pin(path)?;
        let map = HashMap::try_from(aya::maps::Map::HashMap(data))?;
        Ok(FigureStore { map, current: 1 })
    }

    /// The last figures written whole (`None` if none were ever written).
    pub fn read(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let header = match self.map.get(&HEADER, 0) {
            Ok(header) => header,
            Err(MapError::KeyNotFound) => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let word = |index: usize| {
            u64::from_le_bytes(
                header[index * 8..index * 8 + 8]
                    .try_into()
                    .unwrap_or([0; 8]),
            )
        };
        let (magic, copy, length, checksum) = (word(0), word(1), word(2), word(3));
        if magic != MAGIC || copy > 1 || length > u64::from(MAX_CHUNKS) * CHUNK as u64 {
            return Err(StoreError::NoHeader);
        }
        let copy = copy as u32;
        let mut bytes = Vec::with_capacity(length as usize);
        for index in 0..(length as usize).div_ceil(CHUNK) {
            let chunk = self.map.get(&(copy * COPY_BIT + index as u32), 0)?;
            let take = (length as usize - bytes.len()).min(CHUNK);
            bytes.extend_from_slice(&chunk[..take]);
        }
        if fnv1a(&bytes) != checksum {
            return Err(StoreError::Damaged);
        }
        self.current = copy;
        Ok(Some(bytes))
    }

    /// Writes `bytes` into the copy not in use, then makes it the current one.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() > MAX_CHUNKS as usize * CHUNK {
            return Err(io::Error::other(format!(
                "{} bytes of figures exceed the store's {} MiB",
                bytes.len(),
                (MAX_CHUNKS as usize * CHUNK) >> 20
            )));
        }
        let copy = 1 - self.current;
        let mut count = 0;
        for (index, piece) in bytes.chunks(CHUNK).enumerate() {
            let mut chunk = [0u8; CHUNK];
            chunk[..piece.len()].copy_from_slice(piece);
            self.map
                .insert(copy * COPY_BIT + index as u32, chunk, 0)
                .map_err(io::Error::other)?;
            count = index as u32 + 1;
        }
        let mut header = [0u8; CHUNK];
        for (index, word) in [MAGIC, u64::from(copy), bytes.len() as u64, fnv1a(bytes)]
            .into_iter()
            .enumerate()
        {
            header[index * 8..index * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        self.map
            .insert(HEADER, header, 0)
            .map_err(io::Error::other)?;
        self.current = copy;
        // The copy's chunks past its new end, from a larger earlier write: memory given back.
        while count < MAX_CHUNKS && self.map.remove(&(copy * COPY_BIT + count)).is_ok() {
            count += 1;
        }
        Ok(())
    }
}

/// FNV-1a, 64 bits: a checksum and a digest that stay the same across builds and compilers
/// (`std`'s hashers do not promise that).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}
