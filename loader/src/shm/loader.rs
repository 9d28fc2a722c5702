//! A connection's training loader: the one place that translates between the wire's loader
//! messages and the pipeline's types.

use loaderd_cache::error::to_status;
use loaderd_pipeline::dataset::DatasetError;
use loaderd_pipeline::{
    Batch, BatchError, DType, Layout, LoaderSpec, LoaderStatus, OnError, Opened, Session,
    SessionError,
};
use loaderd_proto::v1 as pb;
use metrics::counter;
use tonic::Code;

use super::clients::ClientConnection;
use super::server::Shared;

/// Opens this connection's loader: refused at once when it already has one, else admitted
/// after the process's other opens (one at a time per client process).
pub(super) fn open(
    session: &Option<Session>,
    client: &ClientConnection,
    shared: &Shared,
    r: &pb::OpenLoader,
) -> Result<Session, (Code, String)> {
    if session.is_some() {
        counter!("loaderd_pipeline_open_refusals_total", "reason" => "already_open").increment(1);
        return Err((
            Code::FailedPrecondition,
            "this connection already has a loader; open another connection for another loader"
                .into(),
        ));
    }
    let spec = spec(r).map_err(|e| (Code::InvalidArgument, e))?;
    let lock = client.open_lock();
    let _one_at_a_time = loaderd_cache::sync::lock(&lock);
    Session::open(&shared.cache, &shared.pipelines, &shared.rt, &spec)
        .map_err(|e| (session_code(&e), e.to_string()))
}

/// The request as the pipeline takes it; unknown enum values are refused.
fn spec(r: &pb::OpenLoader) -> Result<LoaderSpec, String> {
    let layout = match pb::SampleLayout::try_from(r.layout) {
        Ok(pb::SampleLayout::Unspecified) => None,
        Ok(pb::SampleLayout::NhwcU8) => Some(Layout::NhwcU8),
        Ok(pb::SampleLayout::NchwF32) => Some(Layout::NchwF32),
        Ok(pb::SampleLayout::NchwF16) => Some(Layout::NchwF16),
        Err(_) => {
            counter!("loaderd_pipeline_open_refusals_total", "reason" => "layout").increment(1);
            return Err(format!(
                "invalid loader request: unknown layout {}",
                r.layout
            ));
        }
    };
    let on_error = match pb::OnSampleError::try_from(r.on_error) {
        Ok(pb::OnSampleError::Unspecified) => None,
        Ok(pb::OnSampleError::Skip) => Some(OnError::Skip),
        Ok(pb::OnSampleError::Fail) => Some(OnError::Fail),
        Err(_) => {
            counter!("loaderd_pipeline_open_refusals_total", "reason" => "on_error").increment(1);
            return Err(format!(
                "invalid loader request: unknown on_error {}",
                r.on_error
            ));
        }
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
    })
}

/// The gRPC code a client sees for a loader that cannot start.
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
pub(super) fn refused(code: Code, error: String) -> pb::LoaderOpened {
    counter!("loaderd_pipeline_open_failures_total").increment(1);
    pb::LoaderOpened {
        code: code as i32,
        error,
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
    }
}
