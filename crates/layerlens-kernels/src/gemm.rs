//! f32 matrix multiplication on the `gemm` crate, on the chosen [`Isa`].
//!
//! `gemm::gemm` picks its micro-kernels from the CPU alone (AVX-512 with its
//! `x86-v4` feature, which this crate enables, else FMA). To let
//! `LAYERLENS_ISA` / [`with_isa`](crate::isa::with_isa) lower the path, the same
//! generic driver (`gemm_common::gemm::gemm_basic_generic`) is instantiated here
//! once per path with that path's SIMD type and micro-kernel tables — exactly
//! what `gemm_f32` does internally, so the arithmetic is `gemm`'s own. The
//! `gemm-common` / `gemm-f32` versions are pinned to `gemm`'s (`=0.19.0`)
//! because these are their semi-internal items.

use crate::isa::Isa;
pub use gemm_common::Parallelism;

type GemmFn = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    isize,
    isize,
    bool,
    *const f32,
    isize,
    isize,
    *const f32,
    isize,
    isize,
    f32,
    f32,
    Parallelism,
);

macro_rules! gemm_path {
    ($name:ident, $simd:ty, $ukr:path, $n:expr) => {
        #[allow(clippy::too_many_arguments)]
        unsafe fn $name(
            m: usize,
            n: usize,
            k: usize,
            dst: *mut f32,
            dst_cs: isize,
            dst_rs: isize,
            read_dst: bool,
            lhs: *const f32,
            lhs_cs: isize,
            lhs_rs: isize,
            rhs: *const f32,
            rhs_cs: isize,
            rhs_rs: isize,
            alpha: f32,
            beta: f32,
            parallelism: Parallelism,
        ) {
            use gemm_common::simd::MixedSimd;
            use $ukr as ukr;
            const N: usize = $n;
            // SAFETY: forwarded from the caller (bounds) and from the dispatch
            // (the CPU has the features of `$simd`, so `try_new` succeeds).
            unsafe {
                gemm_common::gemm::gemm_basic_generic::<
                    _,
                    f32,
                    N,
                    { ukr::MR_DIV_N * N },
                    { ukr::NR },
                    { ukr::MR_DIV_N },
                    { ukr::H_M },
                    { ukr::H_N },
                >(
                    <$simd as MixedSimd<f32, f32, f32, f32>>::try_new()
                        .expect("dispatch checked the CPU's features"),
                    m,
                    n,
                    k,
                    dst,
                    dst_cs,
                    dst_rs,
                    read_dst,
                    lhs,
                    lhs_cs,
                    lhs_rs,
                    rhs,
                    rhs_cs,
                    rhs_rs,
                    alpha,
                    beta,
                    false,
                    false,
                    false,
                    |a, b, c| a * b + c,
                    &ukr::UKR,
                    &ukr::H_UKR,
                    false,
                    parallelism,
                )
            }
        }
    };
}

gemm_path!(
    gemm_portable,
    gemm_common::simd::Scalar,
    gemm_f32::microkernel::scalar::f32,
    1
);
#[cfg(target_arch = "x86_64")]
gemm_path!(
    gemm_avx2,
    gemm_common::simd::V3,
    gemm_f32::microkernel::fma::f32,
    8
);
#[cfg(target_arch = "x86_64")]
gemm_path!(
    gemm_avx512,
    gemm_common::simd::V4,
    gemm_f32::microkernel::avx512f::f32,
    16
);

fn gemm_fn(isa: Isa) -> GemmFn {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => gemm_avx512,
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => gemm_avx2,
        _ => gemm_portable,
    }
}

/// The parallelism for a GEMM: the whole pool when `parallel`, else none.
pub fn parallelism(parallel: bool) -> Parallelism {
    let t = rayon::current_num_threads().max(1);
    if parallel && t > 1 {
        Parallelism::Rayon(t)
    } else {
        Parallelism::None
    }
}

/// `dst[m, n] (+)= lhs[m, k] · rhs[k, n]` with explicit strides: `dst` has row
/// stride `dst_rs` (unit column stride), `lhs` and `rhs` are given as
/// `(row stride, column stride)`. With `accumulate` the product is added to
/// `dst`, otherwise it replaces it.
///
/// # Panics
/// If a slice is shorter than the extents the strides reach.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    isa: Isa,
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // The extents checked here are what the unsafe call reads and writes.
    assert!(dst.len() > (m - 1) * dst_rs + (n - 1));
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    let isa = isa.min(Isa::detected());
    // SAFETY: the asserts above bound every index the GEMM touches; the three
    // buffers are distinct Rust borrows, so `dst` does not alias the operands;
    // `isa` is capped to what the CPU supports.
    unsafe {
        gemm_fn(isa)(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_path_multiplies() {
        let (m, n, k) = (37, 45, 29);
        let (a, b, want) = crate::testutil::integer_product(m, k, n);
        for isa in Isa::supported() {
            for par in [parallelism(false), parallelism(true)] {
                let mut c = vec![f32::NAN; m * n];
                matmul(
                    isa,
                    (m, n, k),
                    &mut c,
                    n,
                    false,
                    &a,
                    (k, 1),
                    &b,
                    (n, 1),
                    par,
                );
                // Small integers: every path is exact.
                assert_eq!(c, want, "{isa}");
                matmul(isa, (m, n, k), &mut c, n, true, &a, (k, 1), &b, (n, 1), par);
                let twice: Vec<f32> = want.iter().map(|v| 2.0 * v).collect();
                assert_eq!(c, twice, "{isa} accumulate");
            }
        }
    }
}
