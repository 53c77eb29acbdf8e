//! citygate integration tests: one binary; each test runs a gateway on port 0 with a temp dir.

mod abuse;
mod broker;
mod cli;
mod cluster;
mod commerce;
mod console;
mod crash;
mod harness;
mod influx;
mod intake;
mod lake;
mod live;
mod market;
mod mqtt;
mod openapi;
mod peers;
mod query;
mod readme;
mod server;
mod simulate;
mod stripe;
mod upstream;
// Throwaway PostgreSQL databases: the file the unit tests use too (not in the library).
#[path = "../../src/market/testdb.rs"]
mod testdb;
