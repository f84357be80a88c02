//! Helpers shared by the kernels' unit tests.

/// A small deterministic generator (LCG): `next(n)` is uniform-ish in `0..n`.
pub(crate) struct Lcg(pub u64);

impl Lcg {
    /// The next value in `0..n`.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize % n
    }
}

/// Small-integer operands `a` (`m × k`) and `b` (`k × n`) and their exact
/// product (every partial sum is an integer below 2²⁴, so every path and
/// summation order gives the same f32 result).
pub(crate) fn integer_product(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
    let mut c = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
        }
    }
    (a, b, c)
}
