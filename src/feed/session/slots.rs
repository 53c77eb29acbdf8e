//! The per-account cap on live sessions: [`Slots`] counts them, a [`Slot`] is one held.

use std::collections::HashMap;
use std::sync::Arc;

/// Live sessions per account: every SSE stream, WebSocket subscription and MQTT filter holds
/// a [`Slot`] while it runs, so one account cannot open sessions without bound (counted by
/// account, not key: an account can make keys). The protocol side
/// holds it (the response stream, the socket's or connection's table of followed feeds), so
/// a feed replaced or ended there gives its place back at once.
#[derive(Debug)]
pub struct Slots {
    max: usize,
    open: std::sync::Mutex<HashMap<String, usize>>,
}

impl Slots {
    pub fn new(max: usize) -> Slots {
        Slots {
            max,
            open: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more session of `account`, or `None` when it has `max` already.
    pub fn take(self: &Arc<Self>, account: &str) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(account.to_string()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Slot {
            account: account.to_string(),
            slots: self.clone(),
        })
    }

    pub fn max(&self) -> usize {
        self.max
    }
}

/// One running session's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    account: String,
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.account) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.account);
            }
        }
    }
}
