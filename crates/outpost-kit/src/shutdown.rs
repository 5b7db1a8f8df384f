//! Graceful shutdown: one token every task watches.
//!
//! A service stops on SIGTERM or SIGINT, and, when it runs under `outpost up`, also when its
//! standard input reaches end of file: the supervisor holds the other end of that pipe, so a
//! supervisor that stops (or dies) takes its children down with it without signals.

use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts shutting down.
    pub fn trigger(&self) {
        self.0.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// Resolves when shutdown starts.
    pub async fn wait(&self) {
        self.0.cancelled().await;
    }

    /// A child signal that fires with this one but can also be triggered alone.
    pub fn child(&self) -> Self {
        Self(self.0.child_token())
    }

    /// Triggers on SIGTERM/SIGINT/SIGHUP, and on end of standard input when `watch_stdin`.
    pub fn listen_for_signals(&self, watch_stdin: bool) {
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(mut signals) = StopSignals::install() else {
                tracing::error!("cannot install signal handlers; stop with SIGKILL");
                return;
            };
            let stdin_closed = async {
                if !watch_stdin {
                    return std::future::pending::<()>().await;
                }
                let mut stdin = tokio::io::stdin();
                let mut buf = [0u8; 64];
                loop {
                    match stdin.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            };
            // Trigger first, then log: logging can fail when the supervisor is gone.
            let why = tokio::select! {
                why = signals.next() => why,
                () = stdin_closed => "supervisor gone",
                () = me.wait() => return,
            };
            me.trigger();
            tracing::info!("{why}: shutting down");
        });
    }
}

/// The signals that ask a process to stop: SIGTERM, SIGINT and SIGHUP.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Takes over the three signals (their default action no longer ends the process).
    pub fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// The next one to arrive, by name.
    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}
