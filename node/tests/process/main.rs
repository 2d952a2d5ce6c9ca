//! Tests of real `kervan` processes, linked into one binary.

mod api;
mod corrupt;
mod crash;
mod federation;
mod harness;
