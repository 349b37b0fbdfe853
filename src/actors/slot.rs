//! Late-bound references to actors that may be restarted: a [`Slot`] per actor, a
//! [`ParserPool`] of slots for the parsers. The supervisor fills them as it (re)spawns actors;
//! senders look the current occupant up at each message.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use ractor::{ActorRef, Message};

use super::messages::ParserMsg;

/// A late-bound reference to an actor that may be restarted.
pub struct Slot<M: Message>(Arc<RwLock<Option<ActorRef<M>>>>);

impl<M: Message> Clone for Slot<M> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<M: Message> Default for Slot<M> {
    fn default() -> Self {
        Self(Arc::new(RwLock::new(None)))
    }
}

impl<M: Message> Slot<M> {
    pub fn set(&self, actor: ActorRef<M>) {
        *self.0.write() = Some(actor);
    }

    pub fn get(&self) -> Option<ActorRef<M>> {
        self.0.read().clone()
    }

    /// Sends `msg` to the current occupant; hands the message back when there is none.
    pub fn cast(&self, msg: M) -> Result<(), M> {
        match self.get() {
            Some(a) => match a.cast(msg) {
                Ok(()) => Ok(()),
                Err(ractor::MessagingErr::SendErr(m)) => Err(m),
                Err(e) => {
                    tracing::warn!(error = %e, "message to actor lost");
                    Ok(())
                }
            },
            None => Err(msg),
        }
    }
}

/// The parser actors, picked round-robin.
#[derive(Clone, Default)]
pub struct ParserPool {
    slots: Arc<RwLock<Vec<Slot<ParserMsg>>>>,
    next: Arc<AtomicUsize>,
}

impl ParserPool {
    pub fn with_size(n: usize) -> Self {
        Self {
            slots: Arc::new(RwLock::new((0..n).map(|_| Slot::default()).collect())),
            next: Default::default(),
        }
    }

    /// Grows or shrinks the pool to `n` slots and returns the removed ones, whose actors the caller
    /// drains. New slots are empty until the supervisor spawns their parsers.
    pub fn resize(&self, n: usize) -> Vec<Slot<ParserMsg>> {
        let mut slots = self.slots.write();
        if n >= slots.len() {
            slots.resize_with(n, Slot::default);
            Vec::new()
        } else {
            slots.split_off(n)
        }
    }

    pub fn slot(&self, i: usize) -> Slot<ParserMsg> {
        self.slots.read()[i].clone()
    }

    pub fn len(&self) -> usize {
        self.slots.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends to the next live parser; hands the message back when none is alive.
    pub fn dispatch(&self, mut msg: ParserMsg) -> Result<(), ParserMsg> {
        let slots = self.slots.read().clone();
        for _ in 0..slots.len() {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % slots.len();
            match slots[i].cast(msg) {
                Ok(()) => return Ok(()),
                Err(m) => msg = m,
            }
        }
        Err(msg)
    }
}
