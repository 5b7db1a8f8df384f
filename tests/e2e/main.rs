//! End-to-end tests: the real `outpost` binary, a temporary data dir, free loopback ports,
//! real peers (mosquitto clients), and nothing but the node's network interfaces.

mod support;

mod api_properties;
mod bus;
mod bus_tls;
mod cli;
mod coap;
mod compat;
mod console;
mod containers;
mod devices;
mod durability;
mod encryption;
mod enroll;
mod export;
mod gateway;
mod ingest;
mod internal_tls;
mod keys;
mod lifecycle;
mod modbus;
mod mqtt_devices;
mod opcua;
mod ota;
mod outage;
mod readme;
mod registry;
mod rest_devices;
mod sandbox;
mod scale;
mod support_services;
mod tpm;
mod writable;
