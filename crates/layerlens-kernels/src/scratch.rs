//! Per-thread scratch buffers for the im2col matrices, reused across calls.
//!
//! A fresh im2col buffer per convolution cost a page-faulted allocation and a
//! memset of up to several MB per call (9 % kernel page clearing + 5 % memset of
//! a ResNet-18 forward, docs/performance.md). The buffer is only ever grown, and
//! never zero-filled again: im2col writes every element it hands to the GEMM.

use std::cell::RefCell;

/// Buffers above this size (in f32 elements, 64 MiB) are not kept after the call,
/// so one huge layer (VGG's first block at a large input) does not pin its
/// memory for the rest of the process.
const KEEP_LIMIT: usize = 16 << 20;

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static WINOGRAD_V: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static WINOGRAD_M: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Which per-thread buffer.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    /// im2col / col2im matrices.
    Im2col,
    /// Winograd's transformed input.
    WinogradInput,
    /// Winograd's products.
    WinogradProducts,
}

/// Runs `f` on a scratch slice of `len` elements whose contents are unspecified
/// (left over from an earlier call).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with_slot(Slot::Im2col, len, f)
}

/// [`with_scratch`] on a chosen buffer, for kernels that need several at once.
pub(crate) fn with_slot<R>(slot: Slot, len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let key = match slot {
        Slot::Im2col => &SCRATCH,
        Slot::WinogradInput => &WINOGRAD_V,
        Slot::WinogradProducts => &WINOGRAD_M,
    };
    key.with(|cell| match cell.try_borrow_mut() {
        // Re-entered on this thread (a rayon worker that stole another
        // convolution while waiting): a buffer of its own.
        Err(_) => f(&mut vec![0.0; len]),
        Ok(_) if len > KEEP_LIMIT => f(&mut vec![0.0; len]),
        Ok(mut v) => {
            if v.len() < len {
                v.resize(len, 0.0);
            }
            f(&mut v[..len])
        }
    })
}
