//! The in-memory dataset and everything that produces it: readers (`h5`, `mtx`), validation of the
//! invariants of model.md §14.4, the simulator, the train/validation split and the minibatch sampler.
//!
//! Memory is proportional to the non-zeros: expression is CSR, splicing is the per-cell list of observed
//! (junction, k, n) entries in CSR order. Cells × junctions is never densified.

pub mod dataset;
pub mod options;
pub use dataset::*;
pub use options::DataOptions;
