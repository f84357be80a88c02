//! Which instruction set the kernels run on, chosen at run time.
//!
//! One binary serves every x86-64 CPU: each hot loop is compiled three times
//! (portable x86-64, AVX2 + FMA, AVX-512) through [`multiversion!`](crate::multiversion),
//! and the GEMM through `gemm`'s matching micro-kernels. The path is the best one
//! the CPU has, unless lowered:
//! - for the whole process by `LAYERLENS_ISA=portable|avx2|avx512` (read once, at
//!   the first kernel call; a path the CPU lacks is refused by [`Isa::from_env`],
//!   which the CLI checks at start-up);
//! - for the calling thread by [`with_isa`] (how the tests run every path the
//!   machine supports side by side).
//!
//! A kernel reads [`active`] once, on the calling thread, and passes the value to
//! the work it hands to the thread pool, so a thread-local override covers the
//! whole call.

use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;

/// An instruction-set path of the kernels, from the most portable up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Baseline x86-64 (SSE2) or whatever the target guarantees elsewhere.
    Portable,
    /// AVX2 with FMA (x86-64-v3).
    Avx2,
    /// AVX-512 F/BW/DQ/VL (x86-64-v4).
    Avx512,
}

impl Isa {
    /// Every path, from the most portable up.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name used by `LAYERLENS_ISA` and printed by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// The best path this CPU supports (detected once).
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(detect)
    }

    /// Every path this CPU can run, from the most portable up.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL
            .into_iter()
            .filter(|&i| i <= Isa::detected())
            .collect()
    }

    /// Parses a path's name (`portable`, `avx2`, `avx512`; also `scalar`,
    /// `x86-64-v3`, `x86-64-v4`) and checks that this CPU can run it.
    pub fn parse(name: &str) -> Result<Isa, IsaError> {
        let isa = match name.trim().to_ascii_lowercase().as_str() {
            "portable" | "scalar" | "sse2" | "x86-64" => Isa::Portable,
            "avx2" | "x86-64-v3" | "v3" => Isa::Avx2,
            "avx512" | "avx-512" | "x86-64-v4" | "v4" => Isa::Avx512,
            _ => return Err(IsaError::Unknown(name.to_string())),
        };
        if isa > Isa::detected() {
            return Err(IsaError::Unsupported {
                asked: isa,
                detected: Isa::detected(),
            });
        }
        Ok(isa)
    }

    /// The path `LAYERLENS_ISA` asks for, if set (an error if it names an unknown
    /// path or one this CPU lacks).
    pub fn from_env() -> Result<Option<Isa>, IsaError> {
        match std::env::var("LAYERLENS_ISA") {
            Ok(v) if !v.trim().is_empty() => Isa::parse(&v).map(Some),
            _ => Ok(None),
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a requested path cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    /// Not a path's name.
    #[error("LAYERLENS_ISA={0:?} is not a kernel path (portable, avx2, avx512)")]
    Unknown(String),
    /// A path this CPU cannot run.
    #[error("LAYERLENS_ISA={asked} asks for more than this CPU has (best path: {detected})")]
    Unsupported {
        /// The path asked for.
        asked: Isa,
        /// The best path of this CPU.
        detected: Isa,
    },
}

/// Every feature the AVX2 copies of [`multiversion!`](crate::multiversion) are
/// compiled with must be present (a VM can hide some of x86-64-v3's).
#[cfg(target_arch = "x86_64")]
fn detect() -> Isa {
    use std::arch::is_x86_feature_detected as has;
    let v3 = has!("avx2")
        && has!("fma")
        && has!("bmi1")
        && has!("bmi2")
        && has!("lzcnt")
        && has!("popcnt")
        && has!("f16c");
    let v4 = v3 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl");
    if v4 {
        Isa::Avx512
    } else if v3 {
        Isa::Avx2
    } else {
        Isa::Portable
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Isa {
    Isa::Portable
}

/// The process-wide path: `LAYERLENS_ISA` when it is valid, else the detected one.
/// An invalid `LAYERLENS_ISA` falls back to the detected path (the CLI refuses it
/// before any kernel runs; a library user calls [`Isa::from_env`]).
pub fn process_isa() -> Isa {
    static PROCESS: OnceLock<Isa> = OnceLock::new();
    *PROCESS.get_or_init(|| Isa::from_env().ok().flatten().unwrap_or_else(Isa::detected))
}

thread_local! {
    static OVERRIDE: Cell<Option<Isa>> = const { Cell::new(None) };
}

/// The path kernels called from this thread use now.
pub fn active() -> Isa {
    OVERRIDE.with(Cell::get).unwrap_or_else(process_isa)
}

/// Runs `f` with the kernels it calls on this thread forced to `isa` (lowered to
/// what the CPU supports), then restores the previous setting, even on a panic.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Isa>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let previous = OVERRIDE.with(|o| o.replace(Some(isa.min(Isa::detected()))));
    let _restore = Restore(previous);
    f()
}

/// Defines a function compiled once per [`Isa`] and dispatched on a leading
/// `isa: Isa` argument. The body is written once, as portable Rust; LLVM
/// vectorises each copy for its instruction set.
///
/// ```
/// layerlens_kernels::multiversion! {
///     /// `y += a · x`.
///     pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
///         for (y, &x) in y.iter_mut().zip(x) {
///             *y += a * x;
///         }
///     }
/// }
/// let mut y = vec![1.0; 4];
/// axpy(layerlens_kernels::isa::active(), 2.0, &[1.0; 4], &mut y);
/// assert_eq!(y, [3.0; 4]);
/// ```
#[macro_export]
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $(<$($lt:lifetime),*>)? ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name $(<$($lt),*>)? (isa: $crate::isa::Isa, $($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body $(<$($lt),*>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,bmi1,bmi2,lzcnt,popcnt,f16c")]
            #[allow(clippy::too_many_arguments)]
            fn v4 $(<$($lt),*>)? ($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,bmi1,bmi2,lzcnt,popcnt,f16c")]
            #[allow(clippy::too_many_arguments)]
            fn v3 $(<$($lt),*>)? ($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
            match isa {
                // SAFETY: `isa` never exceeds `Isa::detected()` (`with_isa` and
                // `Isa::parse` cap it), so the CPU has these features.
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Isa::Avx512 => unsafe { v4($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Isa::Avx2 => unsafe { v3($($arg),*) },
                _ => body($($arg),*),
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_isa_overrides_and_restores() {
        let before = active();
        with_isa(Isa::Portable, || {
            assert_eq!(active(), Isa::Portable);
            with_isa(Isa::Avx512, || {
                assert_eq!(active(), Isa::Avx512.min(Isa::detected()))
            });
            assert_eq!(active(), Isa::Portable);
        });
        assert_eq!(active(), before);
    }

    #[test]
    fn names_parse_back_and_unsupported_paths_are_refused() {
        for isa in Isa::supported() {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
        assert!(matches!(Isa::parse("neon"), Err(IsaError::Unknown(_))));
        if Isa::detected() < Isa::Avx512 {
            assert!(matches!(
                Isa::parse("avx512"),
                Err(IsaError::Unsupported { .. })
            ));
        }
    }
}
