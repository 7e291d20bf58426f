//! End-to-end tests: the real server over gRPC, a fresh PostgreSQL database per test.

mod helpers;
mod partner;
