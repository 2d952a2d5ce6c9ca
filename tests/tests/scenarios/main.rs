//! Kervan's scenario tests, linked into one binary. Each runs real park nodes: real data
//! directories, real sled stores in temporary directories, signed changes moved as bundles.

mod chaos;
mod child;
mod convergence;
mod devices;
mod equivocation;
mod flood;
mod hostile;
mod network;
mod restart;
mod vouched;
