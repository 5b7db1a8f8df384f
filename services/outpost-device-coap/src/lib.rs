//! device-coap (port 59988, CoAP on UDP 5683): constrained devices that send their readings
//! over CoAP (RFC 7252).
//!
//! - **Readings in**: a device POSTs or PUTs to `/<device>/<resource>` (one value),
//!   `/<device>` (an object of resource → value with an optional `timestamp`, one event),
//!   or EdgeX device-coap's `/a1r/<device>/<resource>`. The payload is text
//!   (Content-Format 0), JSON (50), CBOR (60), or the bytes of a `Binary` resource (42);
//!   without a Content-Format the resource's type tells, as device-rest does.
//! - **Acknowledged means published**: a confirmable request gets its ACK (2.04) only once
//!   the event is on the bus; copies of a message are answered, never published twice
//!   ([`server`]). Large payloads come block-wise (RFC 7959 Block1, up to
//!   `max_body_bytes`).
//! - **Authentication**: each device presents its own secret, the one it uses as its MQTT
//!   password or device-rest token, as `?secret=<secret>` (Uri-Query); core-metadata checks
//!   it. Plain CoAP carries it in clear text, as plain HTTP carries device-rest's.
//! - **Answers**: 2.04 published; 4.00 a value of the wrong type or out of range; 4.01 no
//!   or a wrong secret; 4.02 an option it does not support; 4.03 a locked device; 4.04 an
//!   unknown device or resource; 4.05 a method other than POST and PUT; 4.08 blocks out of
//!   order; 4.13 too large (with Size1); 4.15 another Content-Format; 4.29 a device or
//!   sender over its rate (Max-Age); 5.03 the bus did not take the event (Max-Age).
//!
//! Metrics: `outpost_device_coap_requests_total{code}`,
//! `outpost_device_coap_datagrams_dropped_total{reason}`.

pub mod exchange;
pub mod route;

// Without the `driver` feature the crate is only its pure message handling ([`route`],
// [`exchange`]), which the fuzz targets build with none of the service's dependencies.
#[cfg(feature = "driver")]
pub mod server;
#[cfg(feature = "driver")]
mod service;

#[cfg(feature = "driver")]
pub use service::{Coap, CoapConfig, Config, DeviceCoap, PROTOCOL, SERVICE};

#[cfg(test)]
mod tests;
