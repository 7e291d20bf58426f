//! End-to-end tests: the real server over gRPC, a fresh PostgreSQL database per test.

mod auth;
mod cli;
mod enterprises;
mod financing;
mod helpers;
mod lenders;
mod partner;
mod server;
