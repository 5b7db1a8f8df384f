//! The command-line client: talks HTTP to the node's services (and the bus for `events
//! tail`), prints tables for people and JSON for scripts. One module per command family;
//! [`client`] and [`table`] are what they share.

pub mod client;
pub mod cloud;
pub mod data;
pub mod devices;
pub mod enroll;
pub mod keys;
pub mod node;
pub mod ota;
pub mod progress;
pub mod support;
pub mod table;
pub mod users;

pub use client::Client;
pub use devices::NewDevice;
