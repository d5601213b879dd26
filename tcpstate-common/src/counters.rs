//! The programs' counters (`COUNTERS`).

/// Indexes of the `COUNTERS` map. Each recorder has its own block of `counter::COUNT` slots:
/// index = `recorder * counter::COUNT + counter`.
pub mod counter {
    /// Socket records created (sockets that started being tracked).
    pub const RECORDS_CREATED: u32 = 0;
    /// Socket records deleted at CLOSE.
    pub const RECORDS_DELETED: u32 = 1;
    /// Events the nested-event program recorded (the kernel skipped them for the primary one).
    pub const NESTED_EVENTS_RECORDED: u32 = 2;
    /// Failure: the `TRANSITIONS` map was full, the transition was not counted.
    pub const FAILED_TRANSITIONS_MAP_FULL: u32 = 3;
    /// Failure: the socket's slot window was full and no socket storage could be allocated
    /// either, the socket is not tracked.
    pub const FAILED_SOCKET_STORAGE: u32 = 4;
    /// Failure: a state number outside 1..=12, the event was not counted.
    pub const FAILED_UNKNOWN_STATE: u32 = 5;
    /// Failure: deleting a socket record at CLOSE failed.
    pub const FAILED_RECORD_DELETE: u32 = 6;
    /// Failure: the `EVENTS` map was full, a reset or SYN-ACK retransmit was not counted.
    pub const FAILED_EVENTS_MAP_FULL: u32 = 7;
    /// Failure: a `TIMEWAIT_HANDOFFS` record could not be written; that timewait socket gets
    /// inferred labels.
    pub const FAILED_HANDOFF_RECORD: u32 = 8;
    /// Records created in socket-local storage because the socket's slot window was full
    /// (included in `RECORDS_CREATED`).
    pub const RECORDS_IN_SOCKET_STORAGE: u32 = 9;
    /// Failure: a socket first seen mid-life could not be noted in `FIRST_SEEN`; if it is in
    /// the daemon's start-up baseline, its old state's gauge stays one too high.
    pub const FAILED_FIRST_SEEN_RECORD: u32 = 10;
    /// Handoffs a new socket displaced from the slot table before the daemon took them. The
    /// primary program's count is also its `DISPLACED_HANDOFFS` ring's sequence; the nested
    /// program's are lost (it writes no ring).
    pub const HANDOFFS_DISPLACED: u32 = 11;
    pub const COUNT: u32 = 12;
    /// Entries in the `COUNTERS` map.
    pub const SLOTS: u32 = COUNT * crate::recorder::COUNT as u32;
}
