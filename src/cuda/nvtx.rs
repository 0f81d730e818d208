//! NVTX ranges for Nsight Systems timelines (design.md §4). With the `nvtx` feature a range is pushed on
//! the calling thread when the guard is made and popped when it drops; without the feature the guard is
//! an empty struct and the name is never formatted (`format_args!` is lazy), so it costs nothing.
//!
//! ```
//! let _r = splicevi::nvtx_range!("adamw step {}", 3); // bind it: `let _ = ...` would end it at once
//! ```

use std::marker::PhantomData;

/// An open NVTX range (thread-local push/pop, so the guard is not `Send`).
#[must_use = "the range ends when this guard drops; bind it with `let _r = ...`"]
pub struct Range {
    _not_send: PhantomData<*const ()>,
}

impl Range {
    /// Pushes a range named by `args` (use the [`crate::nvtx_range!`] macro).
    #[inline(always)]
    pub fn push(args: std::fmt::Arguments<'_>) -> Range {
        #[cfg(feature = "nvtx")]
        nvtx::range_push!("{}", args);
        #[cfg(not(feature = "nvtx"))]
        let _ = args;
        Range { _not_send: PhantomData }
    }
}

impl Drop for Range {
    #[inline(always)]
    fn drop(&mut self) {
        #[cfg(feature = "nvtx")]
        nvtx::range_pop!();
    }
}

/// Whether NVTX ranges are compiled in.
pub const fn enabled() -> bool {
    cfg!(feature = "nvtx")
}

/// `let _r = nvtx_range!("name {}", x);` opens an NVTX range until `_r` drops (no-op without the `nvtx`
/// feature).
#[macro_export]
macro_rules! nvtx_range {
    ($($arg:tt)+) => {
        $crate::cuda::nvtx::Range::push(::core::format_args!($($arg)+))
    };
}
