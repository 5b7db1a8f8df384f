//! Group commit: small writes that arrive together written as one.
//!
//! A service that records something per event (a delivery attempt, a scheduled run) would
//! otherwise make a commit, and with `storage.sync = "full"` an fsync, for each. A
//! [`Committer`] hands each item to one writer task, which takes what is waiting (up to a
//! bound) and writes it in one call; every caller still returns only once its item is
//! written, so what a caller does afterwards sees it stored.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::{Shutdown, Stage, Tasks};

type Handed<T> = (T, oneshot::Sender<Result<(), String>>);

/// The handle callers write through; cheap to clone.
pub struct Committer<T> {
    tx: mpsc::Sender<Handed<T>>,
}

impl<T> Clone for Committer<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static> Committer<T> {
    /// Starts the writer as task `name` of `tasks`: `write` is given at most `max` items at
    /// a time. It stops after the service stopped serving, writing what was handed over.
    pub fn start<W, Fut>(tasks: &Tasks, name: &'static str, max: usize, write: W) -> Self
    where
        W: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let max = max.max(1);
        let (tx, rx) = mpsc::channel(4 * max);
        tasks.spawn(name, Stage::AfterServing, move |stop| {
            writer(rx, max, write, stop)
        });
        Self { tx }
    }

    /// Hands `item` over; returns once it is written, or why it was not.
    pub async fn write(&self, item: T) -> Result<(), String> {
        let (done, written) = oneshot::channel();
        self.tx
            .send((item, done))
            .await
            .map_err(|_| "the writer has stopped".to_string())?;
        written
            .await
            .unwrap_or_else(|_| Err("the writer has stopped".into()))
    }
}

async fn writer<T, W, Fut>(mut rx: mpsc::Receiver<Handed<T>>, max: usize, write: W, stop: Shutdown)
where
    W: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
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
        let outcome = write(items).await;
        for w in waiting {
            let _ = w.send(outcome.clone());
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
}
