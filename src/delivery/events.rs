//! The days the delivery layer wrote, announced as events: whoever keeps copies of the store's days
//! (the search cache) subscribes; the layer does not know who. [`Events::publish`] returns once
//! every subscriber has handled the event, so a write is visible to searches when the writer goes
//! on, and each publisher has at most one event outstanding (the channels stay small).

use std::sync::Arc;

use chrono::NaiveDate;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

/// Days whose stored plans changed.
#[derive(Debug)]
pub struct WrittenDays {
    pub days: Vec<NaiveDate>,
    handled: Option<oneshot::Sender<()>>,
}

impl WrittenDays {
    /// Tells the publisher this subscriber is done with the event (dropping it does too).
    pub fn handled(mut self) {
        if let Some(tx) = self.handled.take() {
            let _ = tx.send(());
        }
    }
}

#[derive(Clone, Default)]
pub struct Events {
    subscribers: Arc<Mutex<Vec<mpsc::UnboundedSender<WrittenDays>>>>,
}

impl Events {
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<WrittenDays> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.lock().push(tx);
        rx
    }

    /// Announces `days` to every subscriber and waits until each handled them (or is gone).
    pub async fn publish(&self, days: Vec<NaiveDate>) {
        if days.is_empty() {
            return;
        }
        let waits: Vec<oneshot::Receiver<()>> = {
            let mut subscribers = self.subscribers.lock();
            subscribers.retain(|s| !s.is_closed());
            subscribers
                .iter()
                .filter_map(|s| {
                    let (tx, rx) = oneshot::channel();
                    s.send(WrittenDays { days: days.clone(), handled: Some(tx) }).ok().map(|()| rx)
                })
                .collect()
        };
        for wait in waits {
            let _ = wait.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publish_returns_once_every_subscriber_handled_the_days() {
        let events = Events::default();
        events.publish(vec![NaiveDate::MIN]).await; // nobody listens: returns at once
        let mut rx = events.subscribe();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                s.lock().extend(ev.days.iter().copied());
                ev.handled();
            }
        });
        let day = NaiveDate::from_ymd_opt(2030, 5, 1).unwrap();
        events.publish(vec![day]).await;
        assert_eq!(*seen.lock(), vec![day]);
        let gone = events.subscribe();
        drop(gone);
        events.publish(vec![day]).await;
        assert_eq!(seen.lock().len(), 2);
    }
}
