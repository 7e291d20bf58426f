//! End-to-end tests: the real server over gRPC, a fresh PostgreSQL database per test.

mod audit_chain;
mod auth;
mod bench;
mod cli;
mod cluster;
mod crash;
mod deadlines;
mod demo;
mod enterprises;
mod financing;
mod fixtures;
mod helpers;
mod import;
mod lenders;
mod mtls;
mod outages;
mod partner;
mod pki;
mod postgres_tls;
mod reporting;
mod server;
mod special_loans;
mod startup;
mod writes;
