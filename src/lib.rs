//! finmatch: matches enterprises' financing needs to partner banks' loan products.
//!
//! Dependencies point inward: `grpc` → `service` → {`domain`, `matching`, `storage`}.
//! Only `grpc` sees tonic and the generated types; only `storage` writes SQL.

pub mod bench;
pub mod client;
pub mod config;
pub mod demo;
pub mod devdb;
pub mod domain;
pub mod grpc;
pub mod import;
pub mod matching;
pub mod server;
pub mod service;
pub mod storage;
pub mod telemetry;
