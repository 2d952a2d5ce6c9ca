//! Tests of real `kervan` processes, linked into one binary.

mod api;
mod federation;
mod harness;
