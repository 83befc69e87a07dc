//! The endpoint's connection slots: at most `max` connections are open. A
//! new connection over the limit takes the slot of the oldest connection that
//! is not answering a request (idle, or still sending its request head: a
//! slowloris client), which is closed; when every slot is answering a
//! request, the new connection is refused. So a flood of idle connections
//! can neither grow the agent's file descriptors nor lock a scraper out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Closes a connection (aborts its task).
pub(super) type Closer = Box<dyn FnOnce() + Send>;

pub(super) struct Slots {
    max: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    next_id: u64,
    /// By age: ids grow with each connection.
    slots: BTreeMap<u64, Entry>,
}

struct Entry {
    busy: Busy,
    /// `None` until the connection's task is started.
    close: Option<Closer>,
}

/// Requests of one connection being answered now.
#[derive(Clone, Default)]
pub(super) struct Busy(Arc<AtomicUsize>);

/// Marks its connection as answering a request while alive.
pub(super) struct Answering(Busy);

impl Busy {
    pub(super) fn answering(&self) -> Answering {
        self.0.fetch_add(1, Ordering::SeqCst);
        Answering(self.clone())
    }

    fn is_answering(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One taken slot; dropping it frees the slot.
pub(super) struct Slot {
    id: u64,
    busy: Busy,
    slots: Arc<Slots>,
}

impl Slot {
    pub(super) fn busy(&self) -> Busy {
        self.busy.clone()
    }

    /// The connection's task runs: `close` ends it if the slot is taken over.
    pub(super) fn started(&self, close: Closer) {
        if let Some(entry) = self.slots.lock().slots.get_mut(&self.id) {
            entry.close = Some(close);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().slots.remove(&self.id);
    }
}

impl Slots {
    pub(super) fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots { max, open: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new connection, closing the oldest idle one if all are
    /// taken; `None` (refuse the connection) when all are answering.
    pub(super) fn take(self: &Arc<Self>) -> Option<Slot> {
        let mut open = self.lock();
        let mut evicted = None;
        if open.slots.len() >= self.max {
            let idle = open.slots.iter().find(|(_, e)| !e.busy.is_answering()).map(|(id, _)| *id)?;
            evicted = open.slots.remove(&idle);
        }
        let id = open.next_id;
        open.next_id += 1;
        let busy = Busy::default();
        open.slots.insert(id, Entry { busy: busy.clone(), close: None });
        drop(open);
        // Outside the lock: closing may drop the evicted connection's slot.
        if let Some(close) = evicted.and_then(|e| e.close) {
            close();
        }
        Some(Slot { id, busy, slots: self.clone() })
    }

    /// Connections holding a slot now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn closer(flag: &Arc<AtomicBool>) -> Closer {
        let flag = flag.clone();
        Box::new(move || flag.store(true, Ordering::SeqCst))
    }

    #[test]
    fn over_the_limit_the_oldest_idle_connection_gives_way_and_answering_ones_never_do() {
        let slots = Slots::new(2);
        let closed: Vec<Arc<AtomicBool>> = (0..3).map(|_| Arc::default()).collect();
        let first = slots.take().unwrap();
        first.started(closer(&closed[0]));
        let second = slots.take().unwrap();
        second.started(closer(&closed[1]));
        let answering = second.busy().answering();

        let third = slots.take().expect("the first is idle: it gives way");
        third.started(closer(&closed[2]));
        assert!(closed[0].load(Ordering::SeqCst), "the oldest idle connection is closed");
        assert!(!closed[1].load(Ordering::SeqCst), "a connection answering a request is kept");
        assert_eq!(slots.open(), 2);

        let _busy_third = third.busy().answering();
        assert!(slots.take().is_none(), "every slot answers a request: refused");
        assert_eq!(slots.open(), 2);

        drop(answering);
        let fourth = slots.take().expect("the second finished answering: it gives way");
        assert!(closed[1].load(Ordering::SeqCst));
        assert!(!closed[2].load(Ordering::SeqCst));
        drop((first, second, fourth));
        assert_eq!(slots.open(), 1, "dropped slots are free again (the third is still open)");
    }
}
