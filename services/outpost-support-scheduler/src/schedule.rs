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
//!
//! **Several instances on one store** (PostgreSQL): every instance keeps every job in
//! memory, so any of them answers the API and runs a trigger, and follows the others'
//! changes by the store's jobs version, checked every [`UPKEEP`]. Scheduled runs happen
//! on one instance only: the one holding the lease [`LEASE`], renewed every [`UPKEEP`]
//! for [`LEASE_TTL`]. When the holder dies, its lease runs out and another instance takes
//! it; the taker first records what was missed meanwhile, as a start does. A clean stop
//! gives the lease up at once. While the store cannot be reached the lease is not
//! renewed, and the instance stops running jobs (another may hold the lease by then).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// The lease whose holder runs the jobs on schedule.
pub const LEASE: &str = "scheduler";

/// How long the lease lasts unless renewed: how long jobs may go unrun after their
/// runner died.
pub const LEASE_TTL: Duration = Duration::from_secs(10);

/// How often an instance sharing the store renews the lease and looks for changes.
pub const UPKEEP: Duration = Duration::from_secs(1);

outpost_kit::metric_names! {
    /// What the scheduler counts.
    pub struct Metrics {
        /// Action runs, by outcome (`succeeded`, `failed`).
        runs = "action_runs_total",
        /// How late a scheduled run started, milliseconds.
        lateness = "run_lateness_ms",
        /// 1 while this instance runs the jobs on schedule (holds the lease), else 0.
        runner = "runs_jobs",
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
    /// Whether this instance runs the jobs on schedule (holds [`LEASE`]).
    held: AtomicBool,
    /// The store's jobs version this instance's memory reflects; `None` while the store
    /// is this instance's alone.
    version: Mutex<Option<i64>>,
    /// Actions running now (their records not written yet), and a signal when one ends.
    running: AtomicUsize,
    ended: tokio::sync::Notify,
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
            held: AtomicBool::new(false),
            version: Mutex::new(None),
            running: AtomicUsize::new(0),
            ended: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes `stored` (new or changed) into the schedule.
    pub fn put(&self, stored: StoredJob) {
        let entry = Entry::of(stored, now_ms());
        self.lock().insert(entry.stored.job.name.clone(), entry);
        self.reread();
        self.wake.notify_one();
    }

    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
        self.reread();
    }

    /// On a shared store, has the next upkeep read every job again: what this instance
    /// just wrote may have crossed another instance's newer change to the same job.
    fn reread(&self) {
        if let Some(v) = self.lock_version().as_mut() {
            *v = i64::MIN;
        }
    }

    /// Loads every stored job and, when this instance runs the jobs (it takes the lease,
    /// as a store of its own always gives it), records what was missed while the service
    /// was away and runs once the jobs that ask for it.
    pub async fn load(self: &Arc<Self>) -> Result<(), StoreError> {
        *self.lock_version() = self.store.jobs_version().await?;
        let jobs = self.store.all_jobs().await?;
        for stored in &jobs {
            self.put(stored.clone());
        }
        if self.store.lease(LEASE, LEASE_TTL).await? {
            self.took_lease();
            self.catch_up(jobs, now_ms()).await?;
        }
        Ok(())
    }

    fn lock_version(&self) -> std::sync::MutexGuard<'_, Option<i64>> {
        self.version
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn took_lease(&self) {
        self.held.store(true, Ordering::SeqCst);
        metrics::gauge!(self.metrics.runner).set(1.0);
    }

    /// Whether the store is shared with other instances (they change it, and take turns
    /// running the jobs).
    fn shared(&self) -> bool {
        self.lock_version().is_some()
    }

    /// Renews (or takes) the lease and takes in the other instances' changes to jobs.
    async fn upkeep(self: &Arc<Self>) {
        let holds = match self.store.lease(LEASE, LEASE_TTL).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the scheduler lease; not running jobs until it is renewed");
                false
            }
        };
        let was = self.held.load(Ordering::SeqCst);
        let taking = holds && !was;
        // One time for the takeover: what fell due before it is the catch-up's to record,
        // what falls due after it is run.
        let now = now_ms();
        let changed = match self.follow(taking, now).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the jobs' changes");
                // Taking over needs every job read afresh: tried again at the next upkeep.
                if taking {
                    return;
                }
                None
            }
        };
        self.held.store(holds, Ordering::SeqCst);
        metrics::gauge!(self.metrics.runner).set(if holds { 1.0 } else { 0.0 });
        if taking {
            tracing::info!("this instance runs the jobs now (it took the scheduler lease)");
            if let Some(jobs) = changed
                && let Err(e) = self.catch_up(jobs, now).await
            {
                tracing::warn!(error = %e, "cannot record the runs missed before this instance took over");
            }
        } else if was && !holds {
            tracing::info!("another instance runs the jobs now (the scheduler lease passed)");
        }
    }

    /// Takes in what other instances changed since the version this instance's memory
    /// reflects (or everything, `force`d): the jobs as stored, when it read them.
    async fn follow(&self, force: bool, now: i64) -> Result<Option<Vec<StoredJob>>, StoreError> {
        let version = self.store.jobs_version().await?;
        if !force && version == *self.lock_version() {
            return Ok(None);
        }
        let stored = self.store.all_jobs().await?;
        {
            let names: HashSet<&str> = stored.iter().map(|s| s.job.name.as_str()).collect();
            let mut jobs = self.lock();
            jobs.retain(|name, _| names.contains(name.as_str()));
            // Forced (this instance is taking over), every job's next run is reckoned
            // from now: runs that fell due before are the catch-up's to record.
            for s in &stored {
                if force || jobs.get(&s.job.name).is_none_or(|e| e.stored != *s) {
                    jobs.insert(s.job.name.clone(), Entry::of(s.clone(), now));
                }
            }
        }
        *self.lock_version() = version;
        self.wake.notify_one();
        Ok(Some(stored))
    }

    /// Records what `jobs` missed while no instance ran them, and runs once the jobs that
    /// ask for it.
    async fn catch_up(self: &Arc<Self>, jobs: Vec<StoredJob>, now: i64) -> Result<(), StoreError> {
        let mut missed_total = 0;
        for stored in jobs {
            let missed = self.missed(&stored, now).await?;
            missed_total += missed;
            let auto = stored.job.auto_trigger_missed_records;
            let name = stored.job.name.clone();
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
            self.running.fetch_add(1, Ordering::SeqCst);
            handles.push(self.tasks.spawn_child(async move {
                let _ended = Ended(&me);
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

    /// Runs the jobs as they fall due while this instance holds the lease, until `stop`;
    /// then gives the lease up.
    pub async fn run(self: Arc<Self>, stop: Shutdown) {
        let mut upkeep = tokio::time::Instant::now() + UPKEEP;
        loop {
            if self.shared() && tokio::time::Instant::now() >= upkeep {
                self.upkeep().await;
                upkeep = tokio::time::Instant::now() + UPKEEP;
            }
            if !self.held.load(Ordering::SeqCst) {
                tokio::select! {
                    () = stop.wait() => break,
                    () = tokio::time::sleep_until(upkeep) => continue,
                }
            }
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
            let mut wait = earliest
                .map(|t| Duration::from_millis(u64::try_from(t - now_ms()).unwrap_or(0)))
                .unwrap_or(Duration::from_secs(60))
                .min(Duration::from_secs(60));
            if self.shared() {
                wait = wait.min(upkeep.saturating_duration_since(tokio::time::Instant::now()));
            }
            tokio::select! {
                () = stop.wait() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if self.shared() && self.held.swap(false, Ordering::SeqCst) {
            // The runs under way first, their records written: the next runner's catch-up
            // then sees them and does not take them for missed.
            loop {
                let ended = self.ended.notified();
                tokio::pin!(ended);
                ended.as_mut().enable();
                if self.running.load(Ordering::SeqCst) == 0 {
                    break;
                }
                ended.await;
            }
            if let Err(e) = self.store.release(LEASE).await {
                tracing::warn!(error = %e, "cannot give up the scheduler lease; another instance takes it when it runs out");
            }
        }
    }
}

/// Counts an action's run as ended when dropped (its record written, or given up).
struct Ended<'a>(&'a Scheduler);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
        self.0.ended.notify_waiters();
    }
}

impl Entry {
    /// `stored` with its first run after `now`.
    fn of(stored: StoredJob, now: i64) -> Self {
        let schedule = stored.job.definition.schedule().ok();
        let next = schedule
            .as_ref()
            .and_then(|s| first_run(&stored.job, s, now));
        Self {
            stored,
            schedule,
            next,
        }
    }
}
