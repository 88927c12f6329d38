//! A per-core pool of I/O buffers.
//!
//! Connections take a buffer only while bytes are in flight and give it back as soon
//! as they are sent, so an idle connection holds none: that is what keeps thousands
//! of idle tunnels in a few kilobytes each. Each core has its own pool (a
//! thread-local, since a core is one thread); nothing is shared.

use std::cell::RefCell;

/// Size of every pooled buffer: a 5-byte frame header plus four full TLS records of
/// plaintext, or those four records sealed (each adds 22 bytes).
pub(crate) const BUF_SIZE: usize = 4 * (16 * 1024 + 22) + 64;
/// Buffers kept for reuse per core; beyond this they go back to the allocator.
const MAX_KEPT: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A zero-filled buffer of [`BUF_SIZE`] bytes (contents are whatever the last user
/// left; callers track their own lengths).
pub(crate) fn take() -> Vec<u8> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; BUF_SIZE])
}

/// Returns a buffer to this core's pool.
pub(crate) fn give(mut buf: Vec<u8>) {
    if buf.capacity() < BUF_SIZE {
        return;
    }
    // Keep the invariant that pooled buffers are fully initialised.
    if buf.len() != BUF_SIZE {
        buf.resize(BUF_SIZE, 0);
    }
    FREE.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < MAX_KEPT {
            f.push(buf);
        }
    });
}

/// Buffers currently kept by this core (for tests and stats).
#[cfg(test)]
pub(crate) fn kept() -> usize {
    FREE.with(|f| f.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back() {
        let before = kept();
        let a = take();
        assert_eq!(a.len(), BUF_SIZE);
        give(a);
        assert_eq!(kept(), before.max(1));
        let mut short = take();
        short.truncate(10);
        give(short);
        assert_eq!(take().len(), BUF_SIZE);
    }
}
