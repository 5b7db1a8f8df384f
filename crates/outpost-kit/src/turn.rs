//! Instances that take turns: for a service only one instance of which may run at a time,
//! because its state is files on a volume the instances share (export's queues) or its
//! work must happen once and lives in its memory (rules' windows). Its other instances
//! stand by, and one of them takes over when the running one dies.
//!
//! The turn is a lease in PostgreSQL (`[<service>.standby] backend = "postgres"`, the same
//! settings as a store: [`crate::pg::StorageConfig`]), named after the service, in the
//! service's schema. A starting instance waits for the lease before it opens anything
//! ([`wait`], called by [`crate::service::run`] before the port is bound: a standby does not
//! listen, register or answer its health check, so load balancers and the gateway send it
//! nothing). The holder renews it every [`RENEW`] for [`TTL`]. When the holder dies the
//! lease runs out and a standby takes it.
//!
//! The holder fences itself: when it finds the lease taken by another instance, or has not
//! renewed it for [`FENCE`] (half of [`TTL`], counted from when the last renewal was sent,
//! each renewal given only what is left of it: the database lost or hanging), it
//! exits at once, as a kill -9 would, without draining, so it never touches what another
//! instance may have taken (a process that exits this way is one the services are built to
//! lose: the queue is crash-safe and unacknowledged bus messages come again). A clean stop
//! gives the lease up, so a standby takes over at once.

use std::time::{Duration, Instant};

use crate::Context;
use crate::pg::{Database, PgError, StorageConfig};
use crate::tasks::Stage;

/// How long the lease lasts unless renewed: the longest a dead holder's work waits.
pub const TTL: Duration = Duration::from_secs(10);

/// How often the holder renews the lease, and a standby tries to take it.
pub const RENEW: Duration = Duration::from_secs(1);

/// How long the holder goes on without renewing before it exits.
pub const FENCE: Duration = Duration::from_secs(5);

/// The exit status of an instance that lost its turn.
pub const LOST_TURN_EXIT: i32 = 75;

/// Waits until this instance holds `service`'s turn in the database `cfg` names, then keeps
/// it on `ctx`'s tasks (given up when the service stops). `Ok(false)` when the service was
/// stopped while it stood by.
pub async fn wait(ctx: &Context, service: &str, cfg: &StorageConfig) -> Result<bool, PgError> {
    let schema = service.replace('-', "_");
    let db = Database::open(cfg, &ctx.secrets_dir(), service, &schema, &[]).await?;
    let mut standing_by = false;
    let taken = loop {
        let sent = Instant::now();
        match db.lease(service, TTL).await {
            Ok(true) => break sent,
            Ok(false) if !standing_by => {
                standing_by = true;
                tracing::info!(
                    "another instance runs {service}: standing by until its turn runs out"
                );
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot take the turn; will retry"),
        }
        tokio::select! {
            () = ctx.shutdown.wait() => return Ok(false),
            () = tokio::time::sleep(RENEW) => {}
        }
    };
    tracing::info!("this instance runs {service} (it holds the turn)");
    let service = service.to_string();
    // Declared before everything else the service starts: it stops last.
    ctx.tasks.spawn("turn", Stage::AfterServing, move |stop| {
        keep(db, service, stop, taken)
    });
    Ok(true)
}

/// Renews the turn until `stop`, then gives it up; exits the process when it is lost.
/// `renewed` is when the request that last took or renewed it was sent (the database set
/// its expiry after that, so the lease lasts at least until `renewed + TTL`).
async fn keep(db: Database, service: String, stop: crate::Shutdown, mut renewed: Instant) {
    loop {
        tokio::select! {
            () = stop.wait() => break,
            () = tokio::time::sleep(RENEW) => {}
        }
        let sent = Instant::now();
        // A call on a dead connection can hang for minutes: it gets what is left of FENCE.
        let left = FENCE.saturating_sub(renewed.elapsed());
        match tokio::time::timeout(left, db.lease(&service, TTL)).await {
            Ok(Ok(true)) => renewed = sent,
            Ok(Ok(false)) => fence(&service, "another instance holds the turn"),
            Ok(Err(e)) if renewed.elapsed() >= FENCE => fence(
                &service,
                &format!("the turn was not renewed for {FENCE:?} ({e})"),
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the turn; will retry"),
            Err(_) => fence(
                &service,
                &format!("the turn was not renewed for {FENCE:?} (the database does not answer)"),
            ),
        }
    }
    if let Err(e) = db.release(&service).await {
        tracing::warn!(error = %e, "cannot give the turn up; it runs out by itself");
    }
}

/// Leaves at once: another instance may own what this one would touch next.
fn fence(service: &str, why: &str) -> ! {
    tracing::error!(
        "{service} lost its turn: {why}; exiting at once so that another instance takes over"
    );
    std::process::exit(LOST_TURN_EXIT)
}
