//! Group commit: small writes that arrive together written as one.
//!
//! A service that records something per event (a delivery attempt, a scheduled run) would
//! otherwise make a commit, and with `storage.sync = "full"` an fsync, for each. A
//! [`Committer`] hands each item to one writer task, which takes what is waiting (up to a
//! bound) and writes it in one call; every caller still returns only once its item is
//! written, so what a caller does afterwards sees it stored.
//!
//! A batch that fails is written again item by item, so one bad item fails alone. Once the
//! writer has stopped (the service stopping, while requests and their tasks still finish),
//! a caller writes its item itself: nothing handed over is lost to the stop order.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{Shutdown, Stage, Tasks};

type Handed<T> = (T, oneshot::Sender<Result<(), String>>);

/// What writes a batch.
type Write<T> =
    Arc<dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// The handle callers write through; cheap to clone.
pub struct Committer<T> {
    tx: mpsc::Sender<Handed<T>>,
    write: Write<T>,
}

impl<T> Clone for Committer<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            write: Arc::clone(&self.write),
        }
    }
}

impl<T: Clone + Send + 'static> Committer<T> {
    /// Starts the writer as task `name` of `tasks`: `write` is given at most `max` items at
    /// a time. It stops after the service stopped serving, writing what was handed over.
    pub fn start<W, Fut>(tasks: &Tasks, name: &'static str, max: usize, write: W) -> Self
    where
        W: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let max = max.max(1);
        let (tx, rx) = mpsc::channel(4 * max);
        let write: Write<T> = Arc::new(move |items| Box::pin(write(items)));
        let w = Arc::clone(&write);
        tasks.spawn(name, Stage::AfterServing, move |stop| {
            writer(rx, max, w, stop)
        });
        Self { tx, write }
    }

    /// Hands `item` over; returns once it is written, or why it was not.
    pub async fn write(&self, item: T) -> Result<(), String> {
        let (done, written) = oneshot::channel();
        match self.tx.send((item, done)).await {
            Ok(()) => written
                .await
                .unwrap_or_else(|_| Err("the writer was stopped before writing".into())),
            // The writer has stopped: written here.
            Err(mpsc::error::SendError((item, _))) => (self.write)(vec![item]).await,
        }
    }
}

async fn writer<T: Clone>(
    mut rx: mpsc::Receiver<Handed<T>>,
    max: usize,
    write: Write<T>,
    stop: Shutdown,
) {
    loop {
        let first = tokio::select! {
            () = stop.wait() => None,
            r = rx.recv() => r,
        };
        if first.is_none() {
            // Stopping: what is already handed over is still written.
            rx.close();
        }
        let mut batch: Vec<_> = first.into_iter().collect();
        while batch.len() < max {
            match rx.try_recv() {
                Ok(h) => batch.push(h),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            return;
        }
        let (items, waiting): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        if items.len() == 1 {
            let outcome = write(items).await;
            for w in waiting {
                let _ = w.send(outcome.clone());
            }
            continue;
        }
        match write(items.clone()).await {
            Ok(()) => {
                for w in waiting {
                    let _ = w.send(Ok(()));
                }
            }
            // One bad item fails alone: the others are written one by one.
            Err(_) => {
                for (item, w) in items.into_iter().zip(waiting) {
                    let _ = w.send(write(vec![item]).await);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn writes_arriving_together_are_one_call_and_each_caller_waits_for_its_own() {
        let stop = Shutdown::new();
        let tasks = Tasks::new(stop.clone());
        let calls: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
        let seen = Arc::clone(&calls);
        let c = Committer::start(&tasks, "test-writer", 100, move |items: Vec<u32>| {
            let seen = Arc::clone(&seen);
            async move {
                // Slow enough for the others to queue behind the first.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                seen.lock().unwrap().push(items);
                Ok(())
            }
        });
        let writes: Vec<_> = (0..50)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.write(i).await })
            })
            .collect();
        for w in writes {
            assert_eq!(w.await.unwrap(), Ok(()));
        }
        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.iter().map(Vec::len).sum::<usize>(), 50);
        assert!(calls.len() < 50, "{} calls for 50 writes", calls.len());
        stop.trigger();
    }

    #[tokio::test]
    async fn a_bad_item_fails_alone_and_writes_after_the_stop_still_happen() {
        let stop = Shutdown::new();
        let tasks = Tasks::new(stop.clone());
        let stored: Arc<Mutex<Vec<u32>>> = Arc::default();
        let into = Arc::clone(&stored);
        let c = Committer::start(&tasks, "test-writer", 100, move |items: Vec<u32>| {
            let into = Arc::clone(&into);
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                if items.contains(&13) {
                    return Err("13 cannot be stored".into());
                }
                into.lock().unwrap().extend(items);
                Ok(())
            }
        });
        let writes: Vec<_> = (10..20)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { (i, c.write(i).await) })
            })
            .collect();
        for w in writes {
            let (i, outcome) = w.await.unwrap();
            assert_eq!(outcome.is_ok(), i != 13, "{i}: {outcome:?}");
        }
        // The writer stops with the service; a late caller still gets its item written.
        stop.trigger();
        tasks
            .drain(tokio::time::Instant::now() + std::time::Duration::from_secs(5))
            .await;
        assert_eq!(c.write(42).await, Ok(()));
        let mut stored = stored.lock().unwrap().clone();
        stored.sort_unstable();
        assert_eq!(stored, [10, 11, 12, 14, 15, 16, 17, 18, 19, 42]);
    }
}
