//! The jobs that run, and when.
//!
//! Every stored job has an entry with its next run; one loop sleeps until the earliest,
//! runs the jobs that are due (each action as a task of its own, one record per action
//! and run) and computes their next run. A job's first run is at its `startTimestamp`
//! when that lies ahead, else one interval (or the crontab's next time) from now; no run
//! after its `endTimestamp`; a LOCKED job does not run (a trigger still runs it).
//!
//! Runs missed while the service was down are recorded as MISSED when it starts, per
//! action, from the later of the action's last run and the job's last change, at most
//! [`MISSED_CAP`] per action; a job with `autoTriggerMissedRecords` then runs once. Missed
//! runs are not replayed one by one (EdgeX's policy).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_kit::group::Committer;
use outpost_kit::{Shutdown, Tasks};

use crate::actions::Runner;
use crate::cron::Schedule;
use crate::model::{ScheduleActionRecord, ScheduleJob, status};
use crate::store::{NewRecord, SchedulerStore, StoreError, StoredJob};

/// Most MISSED records written per action when the service starts.
pub const MISSED_CAP: usize = 100;

outpost_kit::metric_names! {
    /// What the scheduler counts.
    pub struct Metrics {
        /// Action runs, by outcome (`succeeded`, `failed`).
        runs = "action_runs_total",
        /// How late a scheduled run started, milliseconds.
        lateness = "run_lateness_ms",
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

struct Entry {
    stored: StoredJob,
    schedule: Option<Schedule>,
    next: Option<i64>,
}

pub struct Scheduler {
    store: Arc<dyn SchedulerStore>,
    runner: Runner,
    jobs: Mutex<HashMap<String, Entry>>,
    wake: tokio::sync::Notify,
    tasks: Tasks,
    metrics: Metrics,
    /// Runs' records, written many to a commit: a thousand jobs falling due in the same
    /// second make one or a few commits, not a thousand.
    records: Committer<NewRecord>,
}

/// Most records written in one commit.
const RECORDS_PER_COMMIT: usize = 1_000;

/// The first run of `job` after `now`, if it runs at all.
fn first_run(job: &ScheduleJob, schedule: &Schedule, now: i64) -> Option<i64> {
    let d = &job.definition;
    if job.locked() || (d.end_timestamp != 0 && d.end_timestamp <= now) {
        return None;
    }
    let next = if d.start_timestamp > now {
        match schedule {
            Schedule::Every(_) => Some(d.start_timestamp),
            Schedule::Cron(_) => schedule.next_after(d.start_timestamp - 1),
        }
    } else {
        schedule.next_after(now)
    };
    next.filter(|t| d.end_timestamp == 0 || *t <= d.end_timestamp)
}

/// The run of `job` after the one at `prev`, if any.
fn following(job: &ScheduleJob, schedule: &Schedule, prev: i64) -> Option<i64> {
    schedule
        .next_after(prev)
        .filter(|t| job.definition.end_timestamp == 0 || *t <= job.definition.end_timestamp)
}

impl Scheduler {
    /// The scheduler, with its record writer started as a task of `tasks`.
    pub fn new(
        store: Arc<dyn SchedulerStore>,
        runner: Runner,
        tasks: Tasks,
        metrics: Metrics,
    ) -> Self {
        let writer = Arc::clone(&store);
        let records = Committer::start(&tasks, "records", RECORDS_PER_COMMIT, move |batch| {
            let writer = Arc::clone(&writer);
            async move { writer.add_records(batch).await.map_err(|e| e.to_string()) }
        });
        Self {
            store,
            runner,
            jobs: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            tasks,
            metrics,
            records,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `stored` (new or changed) into the schedule.
    pub fn put(&self, stored: StoredJob) {
        let now = now_ms();
        let schedule = stored.job.definition.schedule().ok();
        let next = schedule
            .as_ref()
            .and_then(|s| first_run(&stored.job, s, now));
        self.lock().insert(
            stored.job.name.clone(),
            Entry {
                stored,
                schedule,
                next,
            },
        );
        self.wake.notify_one();
    }

    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Loads every stored job, records what was missed while the service was away, and
    /// runs once the jobs that ask for it.
    pub async fn load(self: &Arc<Self>) -> Result<(), StoreError> {
        let now = now_ms();
        let jobs = self.store.all_jobs().await?;
        let mut missed_total = 0;
        for stored in jobs {
            let missed = self.missed(&stored, now).await?;
            missed_total += missed;
            let auto = stored.job.auto_trigger_missed_records;
            let name = stored.job.name.clone();
            self.put(stored);
            if missed > 0 && auto {
                tracing::info!(
                    job = name,
                    missed,
                    "running a job once for the runs it missed"
                );
                self.trigger(&name);
            }
        }
        if missed_total > 0 {
            tracing::warn!(
                missed = missed_total,
                "scheduled runs were missed while the service was down"
            );
        }
        Ok(())
    }

    /// Writes the MISSED records of `stored` up to `now`; how many.
    async fn missed(&self, stored: &StoredJob, now: i64) -> Result<usize, StoreError> {
        let job = &stored.job;
        let Ok(schedule) = job.definition.schedule() else {
            return Ok(0);
        };
        let d = &job.definition;
        if job.locked() || (d.end_timestamp != 0 && d.end_timestamp <= job.modified) {
            return Ok(0);
        }
        let mut out = Vec::new();
        for last in self.store.latest(&job.name).await? {
            let Some(i) = stored.action_ids.iter().position(|a| *a == last.action_id) else {
                continue;
            };
            let mut t = last.record.scheduled_at.max(job.modified);
            let mut n = 0;
            while let Some(next) = following(job, &schedule, t) {
                if next >= now || n == MISSED_CAP {
                    break;
                }
                out.push(NewRecord {
                    record: ScheduleActionRecord {
                        id: uuid::Uuid::new_v4().to_string(),
                        job_name: job.name.clone(),
                        action: job.actions[i].without_payload(),
                        status: status::MISSED.into(),
                        scheduled_at: next,
                        created: now,
                    },
                    action_id: last.action_id.clone(),
                });
                t = next;
                n += 1;
            }
        }
        let n = out.len();
        if n > 0 {
            self.store.add_records(out).await?;
        }
        Ok(n)
    }

    /// Runs `name` now, whatever its schedule; `false` when there is no such job. The
    /// answer is the run's tasks, done or not.
    pub fn trigger(self: &Arc<Self>, name: &str) -> Option<Vec<tokio::task::JoinHandle<()>>> {
        let stored = self.lock().get(name).map(|e| e.stored.clone())?;
        Some(self.start_run(stored, now_ms()))
    }

    fn start_run(
        self: &Arc<Self>,
        stored: StoredJob,
        scheduled_at: i64,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut handles = Vec::new();
        for (action, action_id) in stored.job.actions.iter().zip(&stored.action_ids) {
            let me = Arc::clone(self);
            let (action, action_id, job) =
                (action.clone(), action_id.clone(), stored.job.name.clone());
            handles.push(self.tasks.spawn_child(async move {
                let result = me.runner.run(&action).await;
                let outcome = match &result {
                    Ok(()) => status::SUCCEEDED,
                    Err(e) => {
                        tracing::warn!(job, action = action.kind, error = %e, "a scheduled action failed");
                        status::FAILED
                    }
                };
                metrics::counter!(me.metrics.runs, "outcome" => outcome.to_ascii_lowercase()).increment(1);
                let record = ScheduleActionRecord {
                    id: uuid::Uuid::new_v4().to_string(),
                    job_name: job,
                    action: action.without_payload(),
                    status: outcome.into(),
                    scheduled_at,
                    created: now_ms(),
                };
                if let Err(e) = me.records.write(NewRecord { record, action_id }).await {
                    tracing::warn!(error = %e, "cannot record a scheduled action's run");
                }
            }));
        }
        handles
    }

    /// Runs the jobs as they fall due, until `stop`.
    pub async fn run(self: Arc<Self>, stop: Shutdown) {
        loop {
            let now = now_ms();
            let mut due = Vec::new();
            let earliest = {
                let mut jobs = self.lock();
                for e in jobs.values_mut() {
                    let (Some(at), Some(s)) = (e.next, &e.schedule) else {
                        continue;
                    };
                    if at > now {
                        continue;
                    }
                    due.push((e.stored.clone(), at));
                    // The next run after now: runs that fell behind (the host slept) are
                    // skipped, not made up in a burst.
                    let mut next = following(&e.stored.job, s, at);
                    while let Some(n) = next.filter(|n| *n <= now) {
                        next = following(&e.stored.job, s, n);
                    }
                    e.next = next;
                }
                jobs.values().filter_map(|e| e.next).min()
            };
            for (stored, at) in due {
                metrics::histogram!(self.metrics.lateness).record((now - at) as f64);
                self.start_run(stored, at);
            }
            let wait = earliest
                .map(|t| Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0)))
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            tokio::select! {
                () = stop.wait() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
