//! citygate integration tests: one binary; each test runs a gateway on port 0 with a temp dir.

mod cli;
mod harness;
mod intake;
mod peers;
mod server;
