//! The in-memory dataset and everything that produces it: readers (`h5`, `mtx`), validation of the
//! invariants of model.md §14.4, the simulator, the train/validation split and the minibatch sampler.
//!
//! Memory is proportional to the non-zeros: expression is CSR, splicing is the per-cell list of observed
//! (junction, k, n) entries in CSR order. Cells × junctions is never densified.

pub mod dataset;
pub mod h5;
pub mod h5ad_out;
pub mod h5write;
pub mod load;
pub mod mtx;
pub mod options;
pub mod simulate;
pub mod split;
pub mod validate;
pub use dataset::*;
pub use options::DataOptions;
