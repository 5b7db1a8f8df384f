//! What export keeps in its database: the dead letters.
//!
//! A dead letter is an item a destination refused for good, with the reason. It is kept for
//! an operator to inspect, queue again or remove; at most [`MAX_PER_DESTINATION`] per
//! destination, the oldest going first (logged). [`DeadLetterStore`] is that contract;
//! [`crate::sqlite::SqliteDeadLetters`] keeps them in the service's encrypted SQLite
//! database. Another backend would implement the same trait; nothing above this module
//! knows which one runs.

pub use outpost_contracts::export::DeadLetter;
use outpost_queue::{Item, Priority};
use outpost_storage::StorageError;

/// Most dead letters kept per destination; past it the oldest are removed.
pub const MAX_PER_DESTINATION: i64 = 100_000;

/// Dead letters taken to be queued again: per priority (high first), oldest first, and the
/// highest id among them (for [`DeadLetterStore::purge_upto`]).
pub type Taken = (Vec<(Priority, Vec<Vec<u8>>)>, i64);

#[async_trait::async_trait]
pub trait DeadLetterStore: Send + Sync + 'static {
    /// Keeps `items` of `dest`, each with its reason, as failed at `failed_ms`; all or
    /// none. Removes the oldest of `dest` past [`MAX_PER_DESTINATION`].
    async fn put(
        &self,
        dest: &str,
        priority: Priority,
        items: Vec<(Item, String)>,
        failed_ms: u64,
    ) -> Result<(), StorageError>;

    /// How many dead letters `dest` has, and the newest `limit` of them, newest first.
    async fn list(&self, dest: &str, limit: u64) -> Result<(u64, Vec<DeadLetter>), StorageError>;

    /// Every dead letter of `dest` (they stay stored until [`DeadLetterStore::purge_upto`]).
    async fn take_all(&self, dest: &str) -> Result<Taken, StorageError>;

    /// Removes the dead letters of `dest` up to id `max_id` (those taken for a requeue; any
    /// that arrived since stay); returns how many.
    async fn purge_upto(&self, dest: &str, max_id: i64) -> Result<u64, StorageError>;

    /// Removes every dead letter of `dest`; returns how many.
    async fn purge(&self, dest: &str) -> Result<u64, StorageError>;
}
