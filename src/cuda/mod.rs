//! CUDA backend runtime: kernel loading (fatbin embedded by build.rs), device discovery.
