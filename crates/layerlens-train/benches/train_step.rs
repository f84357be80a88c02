//! One training step of the seed CNN (batch 64, 28×28×1; forward, backward and an
//! Adam update), split into forward+loss, backward and optimiser. Run through
//! `scripts/bench-train-step.sh`, which runs the PyTorch twin
//! (`benches/train_step_torch.py`) right after it with the same thread count.
//!
//! Prints one line per phase: `layerlens <phase> median_ms=<m> min_ms=<m>`.

use candle_core::{Device, Tensor};
use layerlens_core::RunOptions;
use layerlens_train::loss::{Loss, Targets};
use layerlens_train::optim::{Adam, Optimizer};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> layerlens_core::Result<()> {
    let steps: usize = std::env::var("STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let model = layerlens_core::zoo::seed_cnn(false)?;
    let x = Tensor::rand(0f32, 1f32, (64, 1, 28, 28), &Device::Cpu)?;
    let labels: Vec<u32> = (0..64).map(|i| i % 10).collect();
    let y = Tensor::from_vec(labels, 64, &Device::Cpu)?;
    let loss = Loss::cross_entropy("dense");
    let mut opt = Adam::new(model.params(), 1e-3);
    let (mut fwd, mut bwd, mut upd, mut total) = (vec![], vec![], vec![], vec![]);
    for i in 0..steps + 5 {
        let t0 = Instant::now();
        let acts = model.run(&[x.clone()], &["dense"], RunOptions::training())?;
        let (l, _) = loss.compute(
            &acts,
            Targets {
                labels: Some(&y),
                values: None,
            },
        )?;
        let _ = l.to_scalar::<f32>()?;
        let t1 = Instant::now();
        let grads = model.params().grads(&l.backward()?);
        let t2 = Instant::now();
        opt.step(&grads)?;
        let t3 = Instant::now();
        if i >= 5 {
            fwd.push((t1 - t0).as_secs_f64() * 1e3);
            bwd.push((t2 - t1).as_secs_f64() * 1e3);
            upd.push((t3 - t2).as_secs_f64() * 1e3);
            total.push((t3 - t0).as_secs_f64() * 1e3);
        }
    }
    for (name, v) in [
        ("forward+loss", &mut fwd),
        ("backward", &mut bwd),
        ("optimizer", &mut upd),
        ("step", &mut total),
    ] {
        let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
        println!(
            "layerlens {name} median_ms={:.2} min_ms={min:.2}",
            median(v)
        );
    }
    Ok(())
}
