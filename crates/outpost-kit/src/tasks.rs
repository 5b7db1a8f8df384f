//! Every task a service runs has an owner: the service's [`Tasks`].
//!
//! A service declares its long-running tasks (consumers, writers, followers, sweepers) with
//! [`Tasks::spawn`], each with a [`Stage`] that says when it is told to stop, and spawns
//! short tasks on behalf of a request or a message with [`Tasks::spawn_child`]. Nothing is
//! detached: when the service stops, the kit stops and awaits every task in a fixed order
//! within one budget ([`crate::service`]), and aborts (and names) whatever overruns it.
//!
//! A long-running task that ends with an error while the service runs stops the service:
//! the process exits with a failure and its supervisor restarts it, rather than leaving a
//! service running with a dead part. A panic ends the process for the same reason.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::Shutdown;

/// A boxed error with its source chain, what tasks and service builds fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// When a long-running task is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// As soon as the service starts stopping, while its HTTP server finishes the requests
    /// in flight: followers, sweepers, gauges, anything whose work can simply end.
    Background,
    /// Once the HTTP server has finished, one after another in reverse order of
    /// declaration, as values are dropped: a task declared after what it uses (a consumer
    /// after the connection it publishes through) stops before it. For consumers that
    /// drain what the bus still holds, writers that flush, and bus connections the API
    /// publishes through.
    AfterServing,
}

/// What a task's future may return: nothing, or a result whose error stops the service.
pub trait TaskOutput: Send + 'static {
    fn into_result(self) -> Result<(), BoxError>;
}

impl TaskOutput for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E: Into<BoxError> + Send + 'static> TaskOutput for Result<(), E> {
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

struct Owned {
    name: &'static str,
    stage: Stage,
    stop: Shutdown,
    handle: JoinHandle<()>,
}

struct Inner {
    service: Shutdown,
    owned: Mutex<Vec<Owned>>,
    children: TaskTracker,
    failure: Mutex<Option<(&'static str, BoxError)>>,
}

/// The owner of a service's tasks; cheap to clone.
#[derive(Clone)]
pub struct Tasks(Arc<Inner>);

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tasks").finish_non_exhaustive()
    }
}

impl Tasks {
    /// The tasks of a service that stops when `service` fires.
    pub fn new(service: Shutdown) -> Self {
        Self(Arc::new(Inner {
            service,
            owned: Mutex::default(),
            children: TaskTracker::new(),
            failure: Mutex::default(),
        }))
    }

    /// Starts a long-running task. `task` gets the signal that tells it to stop (see
    /// [`Stage`]) and should return soon after it fires.
    pub fn spawn<F, Fut>(&self, name: &'static str, stage: Stage, task: F)
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: TaskOutput,
    {
        let stop = match stage {
            Stage::Background => self.0.service.child(),
            // Its own signal: it keeps working while the HTTP server drains.
            Stage::AfterServing => Shutdown::new(),
        };
        let fut = task(stop.clone());
        let inner = Arc::downgrade(&self.0);
        let handle = tokio::spawn(async move {
            let result = fut.await.into_result();
            let Some(inner) = inner.upgrade() else { return };
            match result {
                Ok(()) => tracing::debug!(task = name, "task ended"),
                Err(e) if inner.service.is_triggered() => {
                    tracing::warn!(task = name, error = %chain(e.as_ref()), "task failed while stopping");
                }
                Err(e) => {
                    tracing::error!(task = name, error = %chain(e.as_ref()), "task failed; stopping the service");
                    inner
                        .failure
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_or_insert((name, e));
                    inner.service.trigger();
                }
            }
        });
        self.0
            .owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Owned {
                name,
                stage,
                stop,
                handle,
            });
    }

    /// Starts a short task on behalf of a request or a message. It is not told to stop,
    /// but the service waits for it (within its budget) before it exits.
    pub fn spawn_child<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.children.spawn(fut)
    }

    /// The first long-running task that failed while the service ran, if any.
    pub fn take_failure(&self) -> Option<(&'static str, BoxError)> {
        self.0
            .failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Stops every task: background ones (already told by the service's shutdown) are
    /// awaited, then the after-serving ones are told and awaited one by one in reverse
    /// declaration order, then children. Whatever is still running at `deadline` is
    /// aborted and named.
    pub async fn drain(&self, deadline: Instant) {
        let owned =
            std::mem::take(&mut *self.0.owned.lock().unwrap_or_else(PoisonError::into_inner));
        let (background, ordered): (Vec<_>, Vec<_>) = owned
            .into_iter()
            .partition(|t| t.stage == Stage::Background);
        for t in &background {
            t.stop.trigger();
        }
        for t in background {
            finish(t, deadline).await;
        }
        for t in ordered.into_iter().rev() {
            t.stop.trigger();
            finish(t, deadline).await;
        }
        self.0.children.close();
        if tokio::time::timeout_at(deadline, self.0.children.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.0.children.len(),
                "request tasks still running at the end of the stop budget; leaving them"
            );
        }
    }
}

async fn finish(mut t: Owned, deadline: Instant) {
    if tokio::time::timeout_at(deadline, &mut t.handle)
        .await
        .is_err()
    {
        tracing::warn!(
            task = t.name,
            "did not stop within the stop budget; aborting it"
        );
        t.handle.abort();
    }
}

/// An error with its sources, `a: b: c`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let s_text = s.to_string();
        // Errors that print their source themselves would repeat it.
        if !out.ends_with(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn after_serving_tasks_stop_in_reverse_declaration_order_after_background_ones() {
        let service = Shutdown::new();
        let tasks = Tasks::new(service.clone());
        let order = Arc::new(Mutex::new(Vec::new()));
        for name in ["first", "second"] {
            let order = Arc::clone(&order);
            tasks.spawn(name, Stage::AfterServing, move |stop| async move {
                stop.wait().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                order.lock().unwrap().push(name);
            });
        }
        let o = Arc::clone(&order);
        tasks.spawn("background", Stage::Background, move |stop| async move {
            stop.wait().await;
            o.lock().unwrap().push("background");
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(
            order.lock().unwrap().is_empty(),
            "nothing stops before the service does"
        );
        service.trigger();
        tasks.drain(Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(*order.lock().unwrap(), ["background", "second", "first"]);
    }

    #[tokio::test]
    async fn a_task_that_overruns_the_budget_is_aborted() {
        let service = Shutdown::new();
        let tasks = Tasks::new(service.clone());
        let dropped = Arc::new(AtomicUsize::new(0));
        struct Guard(Arc<AtomicUsize>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let d = Arc::clone(&dropped);
        tasks.spawn("stubborn", Stage::AfterServing, move |_stop| async move {
            let _g = Guard(d);
            std::future::pending::<()>().await;
        });
        service.trigger();
        let started = Instant::now();
        tasks
            .drain(Instant::now() + Duration::from_millis(100))
            .await;
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "the task was aborted");
    }

    #[tokio::test]
    async fn a_failing_task_stops_the_service_and_is_reported() {
        let service = Shutdown::new();
        let tasks = Tasks::new(service.clone());
        tasks.spawn("ok", Stage::Background, |_| async {});
        tasks.spawn("broken", Stage::Background, |_| async {
            Err::<(), _>(std::io::Error::other("disk gone"))
        });
        tokio::time::timeout(Duration::from_secs(5), service.wait())
            .await
            .expect("the failure stops the service");
        let (name, e) = tasks.take_failure().expect("reported");
        assert_eq!(name, "broken");
        assert_eq!(e.to_string(), "disk gone");
    }

    #[tokio::test]
    async fn children_are_awaited() {
        let service = Shutdown::new();
        let tasks = Tasks::new(service.clone());
        let done = Arc::new(AtomicUsize::new(0));
        let d = Arc::clone(&done);
        tasks.spawn_child(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            d.fetch_add(1, Ordering::SeqCst);
        });
        service.trigger();
        tasks.drain(Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn chains_name_every_source_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot open the store")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("permission denied"));
        assert_eq!(chain(&e), "cannot open the store: permission denied");
    }
}
