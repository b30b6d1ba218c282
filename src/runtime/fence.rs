//! The write fence of leader election. A leader may write only while its Lease, as last renewed, is surely still
//! its own: until a renew deadline shorter than the Lease (as client-go's `RenewDeadline`). Every write of both
//! controllers passes [`check`] (in [`super::within_timeout`]), so a leader that was paused past its Lease (SIGSTOP,
//! a long GC pause, a frozen VM) writes nothing when it resumes, even before it notices it lost the Lease. Without
//! leader election the fence stays open.

use std::sync::RwLock;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No leader election: always open.
    Open,
    /// Open until this moment.
    Until(Instant),
}

static FENCE: RwLock<State> = RwLock::new(State::Open);

fn set(state: State) {
    match FENCE.write() {
        Ok(mut f) => *f = state,
        Err(poisoned) => *poisoned.into_inner() = state,
    }
}

/// Opens writes until `deadline` (the Lease was acquired or renewed).
pub fn hold_until(deadline: Instant) {
    set(State::Until(deadline));
}

/// Closes writes at once (standing by, or the Lease was lost or released).
pub fn close() {
    set(State::Until(Instant::now()));
}

/// Whether a write may go out now.
pub fn is_open() -> bool {
    let state = FENCE.read().map(|f| *f).unwrap_or_else(|poisoned| *poisoned.into_inner());
    match state {
        State::Open => true,
        State::Until(deadline) => Instant::now() < deadline,
    }
}

/// `Ok` when a write may go out; otherwise the error that fails the write.
pub fn check() -> Result<(), kube::Error> {
    if is_open() {
        return Ok(());
    }
    Err(kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::PermissionDenied,
        "not writing: this replica's leader Lease is past its renew deadline (another replica may lead now)",
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_fence_opens_until_its_deadline_and_closes() {
        // NB: one test touches the process-wide fence, so tests cannot race on it.
        assert!(is_open(), "open without leader election");
        hold_until(Instant::now() + Duration::from_secs(60));
        assert!(check().is_ok());
        hold_until(Instant::now() - Duration::from_millis(1));
        assert!(check().is_err(), "past the deadline: closed");
        close();
        assert!(!is_open());
        set(State::Open);
        assert!(is_open());
    }
}
