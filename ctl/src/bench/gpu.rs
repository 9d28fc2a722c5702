//! `loaderctl bench pipeline --gpu`: where the daemon served the CUDA loader (device memory or,
//! with its reason, a host ring), its GPU share from status, and the comparison with the CPU
//! run of the same epoch.

use anyhow::bail;
use loaderd_proto::v1 as pb;
use serde_json::{Value, json};

use super::pipeline::Epoch;
use crate::client::shm::{BatchClient, ring_memory};
use crate::human;

/// Where the daemon put a loader that asked for a CUDA device.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Served {
    /// Device memory of this CUDA device, or `None`: a host ring decoded on the CPU.
    pub cuda_device: Option<u32>,
    pub ring_bytes: u64,
    /// Why not a GPU (empty from a daemon that predates GPU loaders).
    pub gpu_reason: String,
}

impl Served {
    pub fn of(c: &BatchClient) -> Self {
        Self::from_opened(c.opened(), c.ring_bytes())
    }

    fn from_opened(o: &pb::LoaderOpened, ring_bytes: u64) -> Self {
        Served {
            cuda_device: (ring_memory(o) == pb::BatchMemory::Cuda).then_some(o.cuda_device),
            ring_bytes,
            gpu_reason: o.gpu_reason.clone(),
        }
    }

    fn reason(&self) -> &str {
        if self.gpu_reason.is_empty() {
            "the daemon gave no reason (it may predate GPU loaders)"
        } else {
            &self.gpu_reason
        }
    }
}

/// Fails unless the loader is in the memory of `device`, or `allow_cpu` accepts a host ring.
pub(super) fn check_served(s: &Served, device: u32, allow_cpu: bool) -> anyhow::Result<()> {
    match s.cuda_device {
        Some(d) if d == device => Ok(()),
        Some(d) => bail!("--gpu: asked for cuda:{device}, the daemon served cuda:{d}"),
        None if allow_cpu => Ok(()),
        None => bail!(
            "--gpu: the daemon served the loader from the CPU, not cuda:{device}: {}; pass \
             --allow-cpu to measure it anyway",
            s.reason()
        ),
    }
}

/// Share of the loader's samples that nvJPEG decoded (None without status or samples).
fn gpu_share(st: &pb::LoaderStatus) -> Option<f64> {
    (st.samples > 0).then(|| st.gpu_samples as f64 / st.samples as f64)
}

/// `g` over `cpu`, when both are known and `cpu` is not zero.
fn ratio(g: Option<f64>, cpu: Option<f64>) -> Option<f64> {
    g.zip(cpu.filter(|c| *c > 0.0)).map(|(g, c)| g / c)
}

/// The `"gpu"` object of the `--json` report.
pub(super) fn json(s: &Served, g: &Epoch, cpu: &Epoch) -> Value {
    let status = g.status.as_ref().map(|st| {
        json!({"device": st.device, "samples": st.samples, "gpu_samples": st.gpu_samples,
            "cpu_fallback_samples": st.cpu_fallback_samples, "gpu_share": gpu_share(st),
            "gpu_secs": st.gpu_secs, "device_bytes": st.device_bytes,
            "gpu_reason": st.gpu_reason})
    });
    json!({"memory": if s.cuda_device.is_some() { "cuda" } else { "host" },
        "cuda_device": s.cuda_device, "ring_bytes": s.ring_bytes, "gpu_reason": s.gpu_reason,
        "batches": g.batches, "samples": g.samples, "bytes": g.bytes, "secs": g.secs,
        "skipped": g.skipped, "images_per_s": g.images_per_s(),
        "steady_images_per_s": g.steady_images_per_s(),
        "gpu_over_cpu": ratio(Some(g.images_per_s()), Some(cpu.images_per_s())),
        "steady_gpu_over_cpu": ratio(g.steady_images_per_s(), cpu.steady_images_per_s()),
        "same_order_as_cpu": g.order_digest == cpu.order_digest, "status": status})
}

/// The text report's GPU lines.
pub(super) fn text(s: &Served, g: &Epoch, cpu: &Epoch) -> String {
    let mut out = match s.cuda_device {
        Some(d) => format!(
            "gpu: served from cuda:{d} (device ring {})\n",
            human(s.ring_bytes)
        ),
        None => format!("gpu: served from the CPU: {}\n", s.reason()),
    };
    out.push_str(&format!(
        "gpu: {:.0} img/s against {:.0} img/s on the CPU path: {:.2}x",
        g.images_per_s(),
        cpu.images_per_s(),
        ratio(Some(g.images_per_s()), Some(cpu.images_per_s())).unwrap_or(f64::NAN)
    ));
    if let Some(r) = ratio(g.steady_images_per_s(), cpu.steady_images_per_s()) {
        out.push_str(&format!(" ({r:.2}x from the first batch on)"));
    }
    out.push('\n');
    match &g.status {
        Some(st) => out.push_str(&format!(
            "gpu: loader on {}: {} of {} samples decoded by nvJPEG ({}), {} decoded on the CPU and uploaded, GPU stream {:.2}s\n",
            if st.device.is_empty() { "?" } else { &st.device },
            st.gpu_samples,
            st.samples,
            gpu_share(st).map_or("-".to_string(), |f| format!("{:.1}%", 100.0 * f)),
            st.cpu_fallback_samples,
            st.gpu_secs
        )),
        None => out.push_str("gpu: the loader was not in the daemon's status\n"),
    }
    out.push_str(&format!(
        "gpu: same samples in the same order as the CPU run: {}\n",
        if g.order_digest == cpu.order_digest {
            "yes"
        } else {
            "no"
        }
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(memory: pb::BatchMemory, device: u32, reason: &str) -> Served {
        let o = pb::LoaderOpened {
            memory: memory as i32,
            cuda_device: device,
            gpu_reason: reason.into(),
            ..Default::default()
        };
        Served::from_opened(&o, 4096)
    }

    #[test]
    fn a_cpu_served_gpu_loader_fails_unless_allowed() {
        let cpu = served(pb::BatchMemory::Host, 0, "gpu.mode = off");
        assert_eq!(cpu.cuda_device, None);
        let err = check_served(&cpu, 0, false).unwrap_err().to_string();
        assert!(
            err.contains("gpu.mode = off") && err.contains("--allow-cpu"),
            "{err}"
        );
        check_served(&cpu, 0, true).expect("allowed");
        // An older daemon: no memory field, no reason.
        let old = served(pb::BatchMemory::Unspecified, 0, "");
        let err = check_served(&old, 0, false).unwrap_err().to_string();
        assert!(err.contains("no reason"), "{err}");
    }

    #[test]
    fn a_gpu_loader_must_be_on_the_device_asked_for() {
        let on1 = served(pb::BatchMemory::Cuda, 1, "");
        assert_eq!(on1.cuda_device, Some(1));
        check_served(&on1, 1, false).expect("served from cuda:1");
        let err = check_served(&on1, 0, true).unwrap_err().to_string();
        assert!(err.contains("cuda:0") && err.contains("cuda:1"), "{err}");
    }

    #[test]
    fn gpu_share_and_ratios() {
        let st = pb::LoaderStatus {
            samples: 200,
            gpu_samples: 150,
            cpu_fallback_samples: 50,
            ..Default::default()
        };
        assert_eq!(gpu_share(&st), Some(0.75));
        assert_eq!(gpu_share(&pb::LoaderStatus::default()), None);
        assert_eq!(ratio(Some(300.0), Some(100.0)), Some(3.0));
        assert_eq!(ratio(Some(300.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
    }
}
