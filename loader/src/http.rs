//! Prometheus `/metrics` and `/healthz` over HTTP/1.1 (hyper), with bounded connections.
//!
//! The endpoint is often scraped from beyond loopback, so nobody may hold it open: at most
//! `server.metrics_max_connections` connections (more are closed at once and counted, see
//! [`crate::listen`]); a request's headers must arrive within `server.metrics_header_timeout`
//! of the connection opening or of the previous answer, which also closes idle keep-alive
//! connections and byte-by-byte (slowloris) senders; and no connection lives longer than
//! `server.metrics_connection_timeout` (an answer in progress then gets one more header
//! timeout to finish), so a client that never reads its answer is closed too.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::debug;

use crate::listen::{self, ConnLimit};

/// Latency buckets for `loaderd_read_latency_seconds`, 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder.
pub fn install_recorder() -> anyhow::Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("latency_seconds".into()), LATENCY_BUCKETS)
        .context("configuring histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")
}

/// Timeouts of the metrics endpoint's connections.
#[derive(Debug, Clone, Copy)]
pub struct HttpTimeouts {
    /// For a request's headers, from the connection's start or the previous answer.
    pub header: Duration,
    /// For a whole connection.
    pub connection: Duration,
}

/// Serves until `stop` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
    limit: ConnLimit,
    timeouts: HttpTimeouts,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(timeouts.header);
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        std::future::ready(Ok::<_, Infallible>(answer(&req, &handle)))
    });
    tokio::pin!(stop);
    loop {
        let (io, slot) = tokio::select! {
            _ = &mut stop => return Ok(()),
            conn = listen::accept(&listener, &limit) => conn,
        };
        let conn = builder.serve_connection(TokioIo::new(io), svc.clone());
        let limit = limit.clone();
        tokio::spawn(async move {
            let _slot = slot;
            tokio::pin!(conn);
            match tokio::time::timeout(timeouts.connection, conn.as_mut()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_timeout() => {
                    limit.timed_out();
                    debug!("metrics connection closed: no request headers within the timeout");
                }
                Ok(Err(e)) => debug!(error = %e, "metrics connection failed"),
                Err(_) => {
                    limit.timed_out();
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(timeouts.header, conn).await;
                }
            }
        });
    }
}

fn answer(req: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: Bytes| {
        let mut r = Response::new(Full::new(body));
        *r.status_mut() = status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, Bytes::new());
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, Bytes::from(handle.render())),
        "/healthz" => reply(StatusCode::OK, Bytes::from_static(b"ok\n")),
        _ => reply(StatusCode::NOT_FOUND, Bytes::new()),
    }
}
