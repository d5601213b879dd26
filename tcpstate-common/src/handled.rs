//! The events the primary program handled, as the nested-event program asks about them.

/// One `inet_sock_set_state` event: the socket's address (compared, never dereferenced), its
/// cookie and the states. The address alone would not tell sockets apart: a freed socket's
/// address comes back with the next socket the slab hands out, which then makes the same
/// transitions; the kernel never reuses a cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventToken {
    pub socket: u64,
    pub cookie: u64,
    pub old_state: u32,
    pub new_state: u32,
}
const _: () = assert!(size_of::<EventToken>() == 24);

/// The events the primary program handled on a CPU whose nested-event program run has not come
/// yet: a stack, one token per event, pushed by the primary program (before it records the event) and popped
/// by the nested-event program when the top is its own event. The nested-event program records
/// an event only if it is not here: the primary program was skipped for it (it was already
/// running on the CPU: the event arrived during its body or the kernel's bookkeeping around it).
/// A stack, not one slot: between the primary program's run for an event and the nested-event
/// program's for the same event, an interrupt may run any number of other events, each of them
/// pushed and popped in turn; the stack's top is the outer event again when they are done. (A
/// ring of the last events, which these pushed out, let a burst of four make the nested-event
/// program record an event the primary had handled.) An event whose nested-event run the kernel
/// skipped (it came while that program ran) is never popped: its token stays until overwritten,
/// below the next events' tokens or on top of the stack (when it came after the nested-event
/// program's pop for another event), so the stack is indexed modulo its size. Such a left-over
/// token never matches a later event: no other socket has its cookie.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandledEvents {
    pub tokens: [EventToken; HANDLED_EVENTS],
    /// Tokens pushed and not popped: the top is at `depth - 1` (modulo `HANDLED_EVENTS`).
    pub depth: u32,
    pub _padding: u32,
}
pub const HANDLED_EVENTS: usize = 8;
const _: () = assert!(size_of::<HandledEvents>() == 24 * HANDLED_EVENTS + 8);

impl HandledEvents {
    /// Pushes the event the primary program is handling (before it records it).
    #[inline(always)]
    pub fn push(&mut self, token: EventToken) {
        if let Some(entry) = self.tokens.get_mut(self.depth as usize % HANDLED_EVENTS) {
            *entry = token;
        }
        self.depth = self.depth.wrapping_add(1);
    }

    /// Whether the primary program handled the event of `token`, for the nested-event program;
    /// pops it if it is on top.
    #[inline(always)]
    pub fn take(&mut self, token: &EventToken) -> Handled {
        let top = self.depth.wrapping_sub(1);
        if let Some(entry) = self.tokens.get_mut(top as usize % HANDLED_EVENTS)
            && entry == token
        {
            // Cleared (no socket is at address 0), so that it never matches again, even a
            // socket that connects again after a disconnect (same cookie). One store: in the BPF
            // program a whole token would be zeroed by a `memset` call.
            entry.socket = 0;
            self.depth = top;
            Handled::Top
        } else if self.tokens.iter().any(|seen| seen == token) {
            Handled::Below
        } else {
            Handled::NotSeen
        }
    }
}

/// Whether the primary program handled an event (see `HandledEvents::take`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handled {
    /// On top of the stack: the primary program handled this event.
    Top,
    /// Below the top: the primary handled it and an event whose nested-event run the kernel
    /// skipped was pushed since; or the same socket made the same transition before (it
    /// connected again after a disconnect) and that token was left over.
    Below,
    NotSeen,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TcpState;

    /// The token of an event of socket `socket` (its address; its cookie is derived from it)
    /// from `old` to `new`.
    fn event(socket: u64, old: TcpState, new: TcpState) -> EventToken {
        event_of_cookie(socket, 1000 + socket, old, new)
    }

    fn event_of_cookie(socket: u64, cookie: u64, old: TcpState, new: TcpState) -> EventToken {
        EventToken {
            socket,
            cookie,
            old_state: old as u32,
            new_state: new as u32,
        }
    }

    #[test]
    fn each_event_the_primary_handled_is_on_top_for_its_nested_run() {
        let mut handled = HandledEvents::default();
        for socket in 1..=3 * HANDLED_EVENTS as u64 {
            let token = event(socket, TcpState::Established, TcpState::FinWait1);
            handled.push(token);
            assert_eq!(handled.take(&token), Handled::Top);
        }
        assert_eq!(handled.depth, 0);
    }

    #[test]
    fn an_interrupt_between_the_two_runs_leaves_the_outer_event_on_top() {
        // A refused connect's CLOSE in process context; a softirq runs many events, each
        // through both programs, between the primary's and the nested program's runs for it.
        // (A ring of the last four tokens lost the outer one: its CLOSE was counted twice.)
        let mut handled = HandledEvents::default();
        let outer = event(1, TcpState::SynSent, TcpState::Close);
        handled.push(outer);
        for socket in 2..2 + 4 * HANDLED_EVENTS as u64 {
            let inner = event(socket, TcpState::FinWait1, TcpState::FinWait2);
            handled.push(inner);
            assert_eq!(handled.take(&inner), Handled::Top);
        }
        assert_eq!(handled.take(&outer), Handled::Top);
    }

    #[test]
    fn an_event_the_primary_skipped_is_not_seen() {
        // The primary, running for `outer`, is skipped for `inner` (same CPU, nested): the
        // nested program finds `inner` nowhere, and `outer` still on top afterwards.
        let mut handled = HandledEvents::default();
        let outer = event(1, TcpState::Established, TcpState::FinWait1);
        let inner = event(2, TcpState::FinWait1, TcpState::FinWait2);
        handled.push(outer);
        assert_eq!(handled.take(&inner), Handled::NotSeen);
        assert_eq!(handled.take(&outer), Handled::Top);
    }

    #[test]
    fn a_skipped_nested_run_leaves_its_token_below_the_next_events() {
        // `inner` comes while the nested program runs for `outer`, before its check: the
        // primary pushes `inner`, the kernel skips the nested run for it.
        let mut handled = HandledEvents::default();
        let outer = event(1, TcpState::CloseWait, TcpState::LastAck);
        let inner = event(2, TcpState::LastAck, TcpState::Close);
        handled.push(outer);
        handled.push(inner);
        assert_eq!(handled.take(&outer), Handled::Below);
        // Later events go on above the leftovers, even past the stack's size.
        for socket in 3..3 + 2 * HANDLED_EVENTS as u64 {
            let later = event(socket, TcpState::SynSent, TcpState::Established);
            handled.push(later);
            assert_eq!(handled.take(&later), Handled::Top);
        }
    }

    #[test]
    fn a_left_over_token_does_not_hide_the_event_of_a_later_socket_at_its_address() {
        // `left_over` comes after the nested program's pop for `outer`, before that program's
        // run ends: the primary pushes it, the kernel skips the nested run for it, and it stays
        // on top. Its socket is freed; the next one at the same address makes the same
        // transition, with its primary run skipped: the nested program must record it. (With
        // the address as the socket's identity, the left-over token matched and the event was
        // lost: one `FIN_WAIT2 -> CLOSE` in a benchmark run.)
        let mut handled = HandledEvents::default();
        let outer = event(1, TcpState::Established, TcpState::FinWait1);
        handled.push(outer);
        assert_eq!(handled.take(&outer), Handled::Top);
        let left_over = event_of_cookie(2, 20, TcpState::FinWait2, TcpState::Close);
        handled.push(left_over);
        let reused = event_of_cookie(2, 21, TcpState::FinWait2, TcpState::Close);
        assert_eq!(handled.take(&reused), Handled::NotSeen);
    }

    #[test]
    fn a_popped_token_is_not_seen_again() {
        // The same socket making the same transition again (it connected again after a
        // disconnect: same address, same cookie), with its primary run skipped: the nested
        // program must record it.
        let mut handled = HandledEvents::default();
        let token = event(1, TcpState::FinWait2, TcpState::Close);
        handled.push(token);
        assert_eq!(handled.take(&token), Handled::Top);
        assert_eq!(handled.take(&token), Handled::NotSeen);
    }
}
