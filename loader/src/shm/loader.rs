//! A connection's training loader: the one place that translates between the wire's loader
//! messages and the pipeline's types.

use loaderd_cache::error::to_status;
use loaderd_pipeline::dataset::DatasetError;
use loaderd_pipeline::{
    Batch, BatchError, DType, Layout, LoaderSpec, LoaderStatus, OnError, Opened, RingMemory,
    Session, SessionError,
};
use loaderd_proto::v1 as pb;
use metrics::counter;
use tonic::Code;

use super::clients::ClientConnection;
use super::server::Shared;

/// Why a connection's loader did not open.
#[derive(Debug, thiserror::Error)]
pub(super) enum OpenError {
    #[error("this connection already has a loader; open another connection for another loader")]
    AlreadyOpen,
    /// An enum value this daemon does not know (a newer client).
    #[error("invalid loader request: unknown {field} {value}")]
    Unknown { field: &'static str, value: i32 },
    #[error(transparent)]
    Session(#[from] SessionError),
}

impl OpenError {
    /// The gRPC code a client sees.
    pub(super) fn code(&self) -> Code {
        match self {
            OpenError::AlreadyOpen => Code::FailedPrecondition,
            OpenError::Unknown { .. } => Code::InvalidArgument,
            OpenError::Session(e) => session_code(e),
        }
    }
}

/// Opens this connection's loader: refused at once when it already has one, else admitted
/// after the process's other opens (one at a time per client process).
pub(super) fn open(
    session: &Option<Session>,
    client: &ClientConnection,
    shared: &Shared,
    r: &pb::OpenLoader,
) -> Result<Session, OpenError> {
    if session.is_some() {
        counter!("loaderd_pipeline_open_refusals_total", "reason" => "already_open").increment(1);
        return Err(OpenError::AlreadyOpen);
    }
    let spec = spec(r)?;
    let lock = client.open_lock();
    let _one_at_a_time = loaderd_cache::sync::lock(&lock);
    Ok(Session::open(
        &shared.cache,
        &shared.pipelines,
        &shared.rt,
        &spec,
    )?)
}

/// Refuses (and counts) an enum value this daemon does not know.
fn unknown(field: &'static str, value: i32) -> OpenError {
    counter!("loaderd_pipeline_open_refusals_total", "reason" => field).increment(1);
    OpenError::Unknown { field, value }
}

/// The request as the pipeline takes it; unknown enum values are refused.
fn spec(r: &pb::OpenLoader) -> Result<LoaderSpec, OpenError> {
    let layout = match pb::SampleLayout::try_from(r.layout) {
        Ok(pb::SampleLayout::Unspecified) => None,
        Ok(pb::SampleLayout::NhwcU8) => Some(Layout::NhwcU8),
        Ok(pb::SampleLayout::NchwF32) => Some(Layout::NchwF32),
        Ok(pb::SampleLayout::NchwF16) => Some(Layout::NchwF16),
        Err(_) => return Err(unknown("layout", r.layout)),
    };
    let on_error = match pb::OnSampleError::try_from(r.on_error) {
        Ok(pb::OnSampleError::Unspecified) => None,
        Ok(pb::OnSampleError::Skip) => Some(OnError::Skip),
        Ok(pb::OnSampleError::Fail) => Some(OnError::Fail),
        Err(_) => return Err(unknown("on_error", r.on_error)),
    };
    Ok(LoaderSpec {
        dataset: r.dataset.clone(),
        batch_size: r.batch_size,
        rank: r.rank,
        world_size: r.world_size,
        seed: r.seed,
        epoch: r.epoch,
        consumed: r.consumed,
        train: r.train,
        size: r.size,
        resize: r.resize,
        layout,
        depth: r.depth,
        drop_last: r.drop_last,
        shuffle: !r.no_shuffle,
        workers: r.workers,
        on_error,
        name: r.name.clone(),
        predecoded: r.predecoded,
        cuda_device: r.cuda_device,
    })
}

/// The gRPC code a client sees for a loader that cannot start: the request's fault, the
/// cache's class, or the daemon out of memory, ring space or threads (RESOURCE_EXHAUSTED:
/// the same request may succeed later or with fewer workers).
fn session_code(e: &SessionError) -> Code {
    match e {
        SessionError::Dataset(DatasetError::Cache(e)) => to_status(e).code(),
        SessionError::Dataset(_)
        | SessionError::Sampler(_)
        | SessionError::Invalid(_)
        | SessionError::Limit { .. } => Code::InvalidArgument,
        SessionError::Ring(_) | SessionError::Budget(_) | SessionError::Threads { .. } => {
            Code::ResourceExhausted
        }
    }
}

/// The reply to a refused open.
pub(super) fn refused(e: &OpenError) -> pb::LoaderOpened {
    counter!("loaderd_pipeline_open_failures_total").increment(1);
    pb::LoaderOpened {
        code: e.code() as i32,
        error: e.to_string(),
        ..Default::default()
    }
}

pub(super) fn opened(o: &Opened) -> pb::LoaderOpened {
    pb::LoaderOpened {
        code: 0,
        error: String::new(),
        slot_bytes: o.slot_bytes,
        depth: o.depth,
        batches: o.batches,
        dataset_len: o.dataset_len,
        sample_shape: o.sample_shape.to_vec(),
        dtype: match o.dtype {
            DType::U8 => pb::Dtype::Uint8,
            DType::F32 => pb::Dtype::Float32,
            DType::F16 => pb::Dtype::Float16,
        } as i32,
        sample_bytes: o.sample_bytes,
        samples: o.samples,
        memory: match o.memory {
            RingMemory::Host => pb::BatchMemory::Host,
            RingMemory::Cuda { .. } => pb::BatchMemory::Cuda,
        } as i32,
        cuda_device: match o.memory {
            RingMemory::Host => 0,
            RingMemory::Cuda { device } => device,
        },
        ring_bytes: o.ring_bytes,
        gpu_reason: o.gpu_reason.clone().unwrap_or_default(),
    }
}

/// The reply to NextBatch: the batch, the end of the epoch, or why not.
pub(super) fn next(session: Option<&mut Session>, release_slot: i64) -> pb::BatchReady {
    let Some(s) = session else {
        return batch_error(Code::FailedPrecondition, "OpenLoader first".into());
    };
    match s.next(usize::try_from(release_slot).ok()) {
        Ok(Some(b)) => batch(b),
        Ok(None) => pb::BatchReady {
            end: true,
            ..Default::default()
        },
        Err(e) => {
            let code = match e {
                BatchError::Release(_) => Code::InvalidArgument,
                BatchError::Failed(_) => Code::DataLoss,
                BatchError::WorkersStopped => Code::Internal,
            };
            batch_error(code, e.to_string())
        }
    }
}

fn batch(b: Batch) -> pb::BatchReady {
    pb::BatchReady {
        code: 0,
        error: String::new(),
        seq: b.seq,
        slot: b.slot,
        samples: b.labels.len() as u32,
        labels: b.labels,
        keys: b.keys,
        skipped: b.skipped,
        end: false,
    }
}

fn batch_error(code: Code, error: String) -> pb::BatchReady {
    pb::BatchReady {
        code: code as i32,
        error,
        ..Default::default()
    }
}

/// One loader's numbers as `Status` reports them.
pub fn loader_status(s: &LoaderStatus) -> pb::LoaderStatus {
    pb::LoaderStatus {
        name: s.name.clone(),
        dataset: s.dataset.clone(),
        rank: s.rank,
        world_size: s.world_size,
        epoch: s.epoch,
        batches_delivered: s.batches_delivered,
        batches_total: s.batches_total,
        samples: s.samples,
        skipped: s.skipped,
        elapsed_secs: s.elapsed_secs,
        samples_per_sec: s.samples_per_sec,
        starved_percent: s.starved_percent,
        fetch_secs: s.fetch_secs,
        decode_secs: s.decode_secs,
        augment_secs: s.augment_secs,
        ready_batches: s.ready_batches,
        depth: s.depth,
        ring_bytes: s.ring_bytes,
        workers: s.workers,
        device: s.device.clone(),
        gpu_samples: s.gpu_samples,
        cpu_fallback_samples: s.cpu_fallback_samples,
        gpu_secs: s.gpu_secs,
        gpu_reason: s.gpu_reason.clone(),
        device_bytes: s.device_bytes,
        block_reads_cached: s.block_reads_cached,
        block_reads_uncached: s.block_reads_uncached,
        hit_ratio: s.hit_ratio,
        prefetched_blocks: s.prefetched_blocks,
        prefetched_bytes: s.prefetched_bytes,
        prefetch_ahead_bytes: s.prefetch_ahead_bytes,
    }
}

#[cfg(test)]
mod tests {
    use loaderd_pipeline::registry::BudgetError;
    use loaderd_pipeline::ring::RingError;

    use super::*;

    fn code_of(e: SessionError) -> Code {
        OpenError::from(e).code()
    }

    #[test]
    fn a_failed_decode_thread_spawn_is_resource_exhausted() {
        // What pthread_create answers at the thread limit.
        let e = SessionError::Threads {
            started: 2,
            want: 8,
            source: std::io::Error::from_raw_os_error(libc::EAGAIN),
        };
        let reply = refused(&OpenError::from(e));
        assert_eq!(reply.code, Code::ResourceExhausted as i32, "{reply:?}");
        assert!(reply.error.contains("thread 3 of 8"), "{reply:?}");
        assert!(reply.error.contains("ask for fewer workers"), "{reply:?}");
    }

    #[test]
    fn refusals_are_in_their_class() {
        let budget = BudgetError::Client {
            need: 10 << 20,
            limit: 1 << 20,
        };
        assert_eq!(code_of(budget.into()), Code::ResourceExhausted);
        assert_eq!(code_of(RingError::Empty.into()), Code::ResourceExhausted);
        let missing = DatasetError::Cache(loaderd_cache::Error::NotFound {
            path: "/d/x".into(),
            uri: "file:///d/x".into(),
        });
        assert_eq!(code_of(missing.into()), Code::NotFound);
        let empty = DatasetError::Empty { path: "/d".into() };
        assert_eq!(code_of(empty.into()), Code::InvalidArgument);
        assert_eq!(
            code_of(SessionError::Invalid("batch_size = 0".into())),
            Code::InvalidArgument
        );
        let over = SessionError::Limit {
            field: "workers",
            value: 99,
            limit: 8,
            key: "pipeline.max_workers",
        };
        assert_eq!(code_of(over), Code::InvalidArgument);
        assert_eq!(OpenError::AlreadyOpen.code(), Code::FailedPrecondition);
    }

    #[test]
    fn unknown_enum_values_are_refused_by_field() {
        let bad_layout = pb::OpenLoader {
            layout: 99,
            ..Default::default()
        };
        let e = spec(&bad_layout).expect_err("layout 99");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.to_string(), "invalid loader request: unknown layout 99");
        let bad_on_error = pb::OpenLoader {
            on_error: -1,
            ..Default::default()
        };
        let e = spec(&bad_on_error).expect_err("on_error -1");
        assert_eq!(e.to_string(), "invalid loader request: unknown on_error -1");

        let ok = pb::OpenLoader {
            layout: pb::SampleLayout::NchwF16 as i32,
            on_error: pb::OnSampleError::Skip as i32,
            no_shuffle: true,
            ..Default::default()
        };
        let s = spec(&ok).expect("known values");
        assert_eq!(s.layout, Some(Layout::NchwF16));
        assert_eq!(s.on_error, Some(OnError::Skip));
        assert!(!s.shuffle);
        let unset = spec(&pb::OpenLoader::default()).expect("defaults");
        assert_eq!((unset.layout, unset.on_error), (None, None));
    }
}
