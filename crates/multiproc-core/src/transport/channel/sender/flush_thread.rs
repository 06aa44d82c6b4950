//! What a dropped sender still owes: frames it accepted but had not written go out from a
//! background thread, so a cancelled flush never loses an accepted message.

use super::RawSender;

impl Drop for RawSender {
    fn drop(&mut self) {
        if !self.closed {
            // A lone frame may still go into the ring; records published since the last flush
            // may have a parked receiver to wake.
            let _ = self.prepare_write();
        }
        if self.outbox.is_empty() || self.closed {
            return;
        }
        // One non-blocking attempt first: the common case finishes here.
        while !self.outbox.is_empty() {
            if self.outbox.write_once(&self.socket).is_err() {
                break;
            }
        }
        if self.outbox.is_empty() {
            return;
        }
        let mut rest = RawSender {
            socket: self.socket.clone(),
            outbox: std::mem::take(&mut self.outbox),
            limit: self.limit,
            closed: false,
            ring: None,
            wake_queued: false,
        };
        // The peer is slow: let a thread deliver the rest rather than lose accepted messages.
        let spawned = std::thread::Builder::new()
            .name("multiproc-flush".into())
            .spawn(move || {
                let _ = rest.blocking_flush(None);
            });
        drop(spawned);
    }
}
