//! finmatch: matches enterprises' financing needs to partner banks' loan products.
//!
//! The server's dependencies point inward: `grpc` → `service` → {`domain`, `matching`,
//! `storage`}. Only `grpc` serves tonic and converts the generated types (`proto`) to and from the
//! domain; the command line's clients (`client`, `import`, `bench`) speak `proto` alone; only
//! `storage` writes SQL.

pub mod bench;
pub mod client;
pub mod config;
pub mod console;
pub mod demo;
pub mod devdb;
pub mod domain;
pub mod grpc;
pub mod import;
pub mod matching;
pub mod proto;
pub mod server;
pub mod service;
pub mod storage;
pub mod telemetry;
