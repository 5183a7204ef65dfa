//! kubeedge-edge's integration tests, one binary.
#![allow(clippy::unwrap_used, missing_docs)]

mod cri;
mod process;
