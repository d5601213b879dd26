//! What one daemon hands the next through a restart, beside the kernel's pinned maps: the
//! figures it derives itself from the sock_diag polls and the slot table's protocol (see
//! docs/restarts.md). Written at each scrape before its answer goes out (`bpf::figure_store`),
//! so what Prometheus saw is never lost, even to SIGKILL. A compact binary encoding: a busy
//! host follows hundreds of thousands of timewait sockets.

use std::collections::BTreeMap;

use tcpstate_common::Labels;

use crate::{
    model::{EdgeKey, Histogram, StateKey},
    sys::ProgramStats,
};

/// Changes with any change of the encoding below (the pinned directory's layout version
/// covers it too: see `bpf::pinning::LAYOUT_VERSION`).
const FORMAT: u64 = u64::from_le_bytes(*b"tcpkept2");

/// The kept figures ended early or do not start as this version writes them.
#[derive(Debug, thiserror::Error)]
#[error("the kept figures are truncated or from another version")]
pub struct Unreadable;

/// What the daemon's own parts keep (the census's part is encoded by the census).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DaemonFigures {
    /// When the programs were first attached (CLOCK_MONOTONIC): kernel times from then on
    /// are the programs' own.
    pub attached_ns: u64,
    /// Per CPU, the sequence of the last displaced handoff taken (see `bpf::maps`).
    pub displaced_taken: Vec<u64>,
    pub displaced_lost: u64,
    pub poll_errors: u64,
    /// What the kernel counted for the programs that upgrades replaced, per program (its
    /// index in `bpf::loader::PROGRAMS`): the exported program figures add it to the running
    /// programs' own.
    pub replaced_programs: Vec<(u64, ProgramStats)>,
}

impl DaemonFigures {
    pub fn save(&self, out: &mut Writer) {
        out.u64(FORMAT);
        out.u64(self.attached_ns);
        out.count(self.displaced_taken.len());
        self.displaced_taken
            .iter()
            .for_each(|taken| out.u64(*taken));
        out.u64(self.displaced_lost);
        out.u64(self.poll_errors);
        out.count(self.replaced_programs.len());
        for (index, stats) in &self.replaced_programs {
            out.u64(*index);
            out.u64(stats.run_time_ns);
            out.u64(stats.run_count);
            out.u64(stats.recursion_misses);
        }
    }

    pub fn restore(input: &mut Reader<'_>) -> Result<Self, Unreadable> {
        if input.u64()? != FORMAT {
            return Err(Unreadable);
        }
        let attached_ns = input.u64()?;
        let displaced_taken = (0..input.count()?)
            .map(|_| input.u64())
            .collect::<Result<_, _>>()?;
        let (displaced_lost, poll_errors) = (input.u64()?, input.u64()?);
        let replaced_programs = (0..input.count()?)
            .map(|_| {
                let index = input.u64()?;
                let stats = ProgramStats {
                    run_time_ns: input.u64()?,
                    run_count: input.u64()?,
                    recursion_misses: input.u64()?,
                };
                Ok((index, stats))
            })
            .collect::<Result<_, _>>()?;
        Ok(DaemonFigures {
            attached_ns,
            displaced_taken,
            displaced_lost,
            poll_errors,
            replaced_programs,
        })
    }
}

/// `bytes`, figures a daemon kept, with `replaced` added to their replaced programs' figures:
/// for a daemon that continues an earlier state to write at once, so that a SIGKILL before its
/// first scrape loses nothing.
pub fn with_replaced_programs(
    bytes: &[u8],
    replaced: &[(u64, ProgramStats)],
) -> Result<Vec<u8>, Unreadable> {
    let mut input = Reader::new(bytes);
    let mut figures = DaemonFigures::restore(&mut input)?;
    figures.replaced_programs.extend_from_slice(replaced);
    let mut out = Writer::default();
    figures.save(&mut out);
    out.raw(input.rest());
    Ok(out.into_bytes())
}

#[derive(Default)]
pub struct Writer(Vec<u8>);

impl Writer {
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    pub fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    pub fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    pub fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    pub fn i64(&mut self, value: i64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    pub fn count(&mut self, len: usize) {
        self.u64(len as u64);
    }

    /// Bytes another writer wrote, as they were read (`Reader::rest`).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    pub fn option(&mut self, value: Option<u64>) {
        self.u8(u8::from(value.is_some()));
        self.u64(value.unwrap_or(0));
    }

    pub fn labels(&mut self, labels: Labels) {
        self.0.extend_from_slice(&labels.port.to_le_bytes());
        self.u8(labels.family);
        self.u8(labels.role);
        self.u32(labels.cgroup);
    }

    pub fn state_counts(&mut self, counts: &BTreeMap<StateKey, i64>) {
        self.count(counts.len());
        for (key, count) in counts {
            self.labels(key.labels);
            self.u8(key.state);
            self.i64(*count);
        }
    }

    pub fn edge_counts(&mut self, counts: &BTreeMap<EdgeKey, u64>) {
        self.count(counts.len());
        for (key, count) in counts {
            self.edge_key(*key);
            self.u64(*count);
        }
    }

    pub fn histograms(&mut self, histograms: &BTreeMap<EdgeKey, Histogram>) {
        self.count(histograms.len());
        for (key, histogram) in histograms {
            self.edge_key(*key);
            self.u64(histogram.count);
            self.u64(histogram.sum_ns);
            self.count(histogram.buckets.len());
            histogram.buckets.iter().for_each(|count| self.u64(*count));
        }
    }

    fn edge_key(&mut self, key: EdgeKey) {
        self.labels(key.labels);
        self.u8(key.edge.from);
        self.u8(key.edge.to);
    }
}

pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes }
    }

    /// Whether everything was read (a longer input is not what this version wrote).
    pub fn is_done(&self) -> bool {
        self.bytes.is_empty()
    }

    /// What is left to read.
    pub fn rest(self) -> &'a [u8] {
        self.bytes
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Unreadable> {
        let (head, rest) = self.bytes.split_first_chunk::<N>().ok_or(Unreadable)?;
        self.bytes = rest;
        Ok(*head)
    }

    pub fn u8(&mut self) -> Result<u8, Unreadable> {
        Ok(self.take::<1>()?[0])
    }

    pub fn u32(&mut self) -> Result<u32, Unreadable> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    pub fn u64(&mut self) -> Result<u64, Unreadable> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    pub fn i64(&mut self) -> Result<i64, Unreadable> {
        Ok(i64::from_le_bytes(self.take()?))
    }

    /// A count of entries: never more than the bytes left could hold (a damaged count must
    /// not reserve gigabytes).
    pub fn count(&mut self) -> Result<usize, Unreadable> {
        let len = self.u64()?;
        if len > self.bytes.len() as u64 {
            return Err(Unreadable);
        }
        Ok(len as usize)
    }

    pub fn option(&mut self) -> Result<Option<u64>, Unreadable> {
        let some = self.u8()?;
        let value = self.u64()?;
        Ok((some != 0).then_some(value))
    }

    pub fn labels(&mut self) -> Result<Labels, Unreadable> {
        Ok(Labels {
            port: u16::from_le_bytes(self.take()?),
            family: self.u8()?,
            role: self.u8()?,
            cgroup: self.u32()?,
        })
    }

    pub fn state_counts(&mut self) -> Result<BTreeMap<StateKey, i64>, Unreadable> {
        (0..self.count()?)
            .map(|_| Ok((StateKey::new(self.labels()?, self.u8()?), self.i64()?)))
            .collect()
    }

    pub fn edge_counts(&mut self) -> Result<BTreeMap<EdgeKey, u64>, Unreadable> {
        (0..self.count()?)
            .map(|_| Ok((self.edge_key()?, self.u64()?)))
            .collect()
    }

    pub fn histograms(&mut self) -> Result<BTreeMap<EdgeKey, Histogram>, Unreadable> {
        (0..self.count()?)
            .map(|_| {
                let key = self.edge_key()?;
                let count = self.u64()?;
                let sum_ns = self.u64()?;
                let buckets = (0..self.count()?)
                    .map(|_| self.u64())
                    .collect::<Result<_, _>>()?;
                Ok((
                    key,
                    Histogram {
                        buckets,
                        count,
                        sum_ns,
                    },
                ))
            })
            .collect()
    }

    fn edge_key(&mut self) -> Result<EdgeKey, Unreadable> {
        Ok(EdgeKey::new(self.labels()?, self.u8()?, self.u8()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_figures_come_back_as_written() {
        let figures = DaemonFigures {
            attached_ns: 7,
            displaced_taken: vec![3, 0, 9],
            displaced_lost: 2,
            poll_errors: 1,
            replaced_programs: vec![(
                0,
                ProgramStats {
                    run_time_ns: 5,
                    run_count: 4,
                    recursion_misses: 3,
                },
            )],
        };
        let mut out = Writer::default();
        figures.save(&mut out);
        let bytes = out.into_bytes();
        let mut input = Reader::new(&bytes);
        assert_eq!(DaemonFigures::restore(&mut input).unwrap(), figures);
        assert!(input.is_done());
    }

    #[test]
    fn replaced_programs_are_added_and_the_rest_kept() {
        let stats = |misses| ProgramStats {
            recursion_misses: misses,
            ..ProgramStats::default()
        };
        let figures = DaemonFigures {
            attached_ns: 7,
            replaced_programs: vec![(0, stats(3))],
            ..DaemonFigures::default()
        };
        let mut out = Writer::default();
        figures.save(&mut out);
        out.u64(42); // what the census writes after
        let bytes =
            with_replaced_programs(&out.into_bytes(), &[(0, stats(5)), (1, stats(1))]).unwrap();
        let mut input = Reader::new(&bytes);
        let restored = DaemonFigures::restore(&mut input).unwrap();
        assert_eq!(
            restored.replaced_programs,
            [(0, stats(3)), (0, stats(5)), (1, stats(1))]
        );
        assert_eq!(restored.attached_ns, 7);
        assert_eq!((input.u64().unwrap(), input.is_done()), (42, true));
        assert!(with_replaced_programs(&[1, 2, 3], &[]).is_err());
    }

    #[test]
    fn truncated_or_foreign_bytes_are_refused_without_panic() {
        let mut out = Writer::default();
        DaemonFigures::default().save(&mut out);
        let bytes = out.into_bytes();
        for end in 0..bytes.len() {
            assert!(DaemonFigures::restore(&mut Reader::new(&bytes[..end])).is_err());
        }
        assert!(DaemonFigures::restore(&mut Reader::new(&[0xff; 64])).is_err());
    }

    #[test]
    fn a_damaged_count_reserves_nothing() {
        let mut input = Reader::new(&[0xff; 8]);
        assert!(input.count().is_err());
    }

    #[test]
    fn counts_and_histograms_come_back_as_written() {
        let labels = Labels {
            port: 443,
            family: 2,
            role: 1,
            cgroup: 77,
        };
        let edges = BTreeMap::from([(EdgeKey::new(labels, 6, 7), 5)]);
        let states = BTreeMap::from([(StateKey::new(labels, 4), -2)]);
        let histograms = BTreeMap::from([(
            EdgeKey::new(labels, 6, 7),
            Histogram {
                buckets: vec![1, 0, 4],
                count: 5,
                sum_ns: 99,
            },
        )]);
        let mut out = Writer::default();
        out.edge_counts(&edges);
        out.state_counts(&states);
        out.histograms(&histograms);
        let bytes = out.into_bytes();
        let mut input = Reader::new(&bytes);
        assert_eq!(input.edge_counts().unwrap(), edges);
        assert_eq!(input.state_counts().unwrap(), states);
        assert_eq!(input.histograms().unwrap(), histograms);
        assert!(input.is_done());
    }
}
