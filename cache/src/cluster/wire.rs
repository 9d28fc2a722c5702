//! `GetBlock` on the wire without copying the block.
//!
//! tonic's codec encodes each message into a fresh buffer (growing it as it goes) and
//! decodes from a buffer it fills frame by frame: two copies of every block per peer read,
//! on top of the kernel's. Here the owner writes a block reply as a gRPC message whose large
//! field *is* the cached block (a `Bytes` shared with the memory tier, which HTTP/2 writes to
//! the socket from where it lies), and the reader decodes the reply in place from the HTTP/2
//! DATA frames it received, so the block it gets is a slice of the frame that carried it.
//!
//! It is plain gRPC (length-prefixed protobuf, `grpc-status` trailers): any gRPC client can
//! call `GetBlock` on a node, and this node's client
//! ([`super::peer::PeerPool::get_block`], through [`read_reply`]) can call any gRPC server.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Collected, LengthLimitError, Limited};
use loaderd_proto::v1 as pb;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::StdError;

/// The gRPC path of `GetBlock`.
pub const GET_BLOCK_PATH: &str = "/loaderd.v1.Peer/GetBlock";

/// Length of the gRPC message prefix: a compression flag and a big-endian u32 length.
const PREFIX_LEN: usize = 5;

/// Largest `GetBlock` request a node reads (a path, a URI and a few numbers).
pub const MAX_REQUEST: usize = 64 << 10;

/// One gRPC message prefix for a body of `len` bytes.
fn prefix(len: usize, out: &mut impl BufMut) -> Result<(), Status> {
    let len = u32::try_from(len)
        .map_err(|_| Status::resource_exhausted(format!("a {len}-byte message is too large")))?;
    out.put_u8(0);
    out.put_u32(len);
    Ok(())
}

/// The HTTP/2 body of a `GetBlock` reply: the gRPC prefix and every field but `data`, then
/// `data` itself, uncopied. Protobuf fields may come in any order, so this decodes as the
/// same [`pb::PeerBlock`] as tonic's own encoding.
pub fn encode_reply(reply: pb::PeerBlock) -> Result<[Bytes; 2], Status> {
    let pb::PeerBlock {
        data,
        crc32c,
        was_cached,
    } = reply;
    let rest = pb::PeerBlock {
        data: Bytes::new(),
        crc32c,
        was_cached,
    };
    // Field 1 (`data`): its key and length here, its bytes as they are (an empty one is
    // left out, as proto3 does).
    let data_head = if data.is_empty() {
        0
    } else {
        key_len(1) + encoded_len_varint(data.len() as u64)
    };
    let head_len = rest.encoded_len() + data_head;
    let mut head = BytesMut::with_capacity(PREFIX_LEN + head_len);
    prefix(head_len + data.len(), &mut head)?;
    rest.encode(&mut head)
        .map_err(|e| Status::internal(format!("encoding a block reply: {e}")))?;
    if !data.is_empty() {
        encode_key(1, WireType::LengthDelimited, &mut head);
        encode_varint(data.len() as u64, &mut head);
    }
    Ok([head.freeze(), data])
}

/// A `GetBlock` request as one gRPC message (small: it is copied like any other).
pub fn encode_request(req: &pb::PeerBlockRequest) -> Result<Bytes, Status> {
    let mut out = BytesMut::with_capacity(PREFIX_LEN + req.encoded_len());
    prefix(req.encoded_len(), &mut out)?;
    req.encode(&mut out)
        .map_err(|e| Status::internal(format!("encoding a block request: {e}")))?;
    Ok(out.freeze())
}

/// Decodes the one gRPC message of `buf` as a `T` of at most `max` bytes, checking that it
/// is uncompressed, complete and alone.
fn decode_message<T: Message + Default>(
    mut buf: impl Buf,
    what: &str,
    max: usize,
) -> Result<T, Status> {
    if buf.remaining() < PREFIX_LEN {
        return Err(Status::internal(format!(
            "{what}: {} bytes, shorter than a gRPC message prefix",
            buf.remaining()
        )));
    }
    if buf.get_u8() != 0 {
        return Err(Status::unimplemented(format!(
            "{what} is compressed; the peer API does not compress"
        )));
    }
    let len = buf.get_u32() as usize;
    if len > max {
        return Err(Status::resource_exhausted(format!(
            "{what} of {len} bytes is over the limit of {max}"
        )));
    }
    if len != buf.remaining() {
        return Err(Status::internal(format!(
            "{what}: the message says {len} bytes, the body holds {}",
            buf.remaining()
        )));
    }
    T::decode(buf).map_err(|e| Status::internal(format!("decoding {what}: {e}")))
}

/// Reads a whole HTTP/2 body, refusing more than `max` bytes. The DATA frames stay as they
/// arrived: the collected body's buffer hands out a slice of a frame, without copying,
/// whenever the bytes asked for lie within one frame, which is how prost reads `bytes`
/// fields.
async fn collect<B>(body: B, max: usize) -> Result<Collected<Bytes>, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    Limited::new(body, max).collect().await.map_err(|e| {
        if e.downcast_ref::<LengthLimitError>().is_some() {
            Status::resource_exhausted(format!("message over the limit of {max} bytes"))
        } else {
            Status::from_error(e)
        }
    })
}

/// The `GetBlock` request in an HTTP/2 request body (server side).
pub async fn read_request(body: Body) -> Result<pb::PeerBlockRequest, Status> {
    let body = collect(body, PREFIX_LEN + MAX_REQUEST).await?;
    decode_message(body.aggregate(), "block request", MAX_REQUEST)
}

/// The HTTP response carrying a `GetBlock` reply or its error (server side).
pub fn reply(result: Result<pb::PeerBlock, Status>) -> http::Response<Body> {
    let parts = result.and_then(encode_reply);
    match parts {
        Ok([head, data]) => {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            // No empty DATA frames (a `discard` reply has no data): h2 counts them against a
            // per-connection limit and closes the connection past it.
            let frames = [head, data]
                .into_iter()
                .filter(|b| !b.is_empty())
                .map(http_body::Frame::data)
                .chain(std::iter::once(http_body::Frame::trailers(trailers)))
                .map(Ok::<_, std::convert::Infallible>);
            let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
            let mut resp = http::Response::new(Body::new(body));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            resp
        }
        Err(status) => status.into_http(),
    }
}

/// The reply to a `GetBlock` call whose HTTP response is `resp`, at most `max` bytes
/// (client side): the error the server sent, or the block, decoded in place.
pub async fn read_reply<B>(resp: http::Response<B>, max: usize) -> Result<pb::PeerBlock, Status>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    let (parts, body) = resp.into_parts();
    // A "trailers-only" reply: an error with no body.
    if let Some(status) = Status::from_header_map(&parts.headers)
        && status.code() != tonic::Code::Ok
    {
        return Err(status);
    }
    if parts.status != http::StatusCode::OK {
        return Err(Status::unknown(format!(
            "the peer answered HTTP {}",
            parts.status
        )));
    }
    let body = collect(body, max.saturating_add(PREFIX_LEN)).await?;
    match body.trailers().and_then(Status::from_header_map) {
        Some(status) if status.code() == tonic::Code::Ok => {
            decode_message(body.aggregate(), "block reply", max)
        }
        Some(status) => Err(status),
        None => Err(Status::internal("the reply ended without a grpc-status")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(len: usize) -> pb::PeerBlock {
        let data: Bytes = (0..len)
            .map(|i| (i * 31 % 251) as u8)
            .collect::<Vec<_>>()
            .into();
        pb::PeerBlock {
            crc32c: crc32c::crc32c(&data),
            data,
            was_cached: true,
        }
    }

    /// A body received as `parts`, one DATA frame each, collected as the client does.
    async fn frames_of(parts: &[Bytes]) -> impl Buf + use<> {
        let frames = parts
            .iter()
            .map(|p| Ok::<_, std::convert::Infallible>(http_body::Frame::data(p.clone())));
        collect(
            http_body_util::StreamBody::new(futures::stream::iter(frames)),
            usize::MAX,
        )
        .await
        .unwrap()
        .aggregate()
    }

    #[tokio::test]
    async fn reply_is_the_same_message_as_prosts_encoding() {
        for len in [0, 1, 127, 128, 16_384, 115_000] {
            let b = block(len);
            let [head, data] = encode_reply(b.clone()).unwrap();
            assert_eq!(data.as_ptr(), b.data.as_ptr(), "the block is not copied");
            let frames = frames_of(&[head.clone(), data.clone()]).await;
            let decoded: pb::PeerBlock = decode_message(frames, "reply", usize::MAX).unwrap();
            assert_eq!(decoded, b);
            // tonic's encoding of the same message decodes the same, and has the same length.
            let mut whole = head.to_vec();
            whole.extend_from_slice(&data);
            assert_eq!(whole.len(), PREFIX_LEN + b.encoded_len());
            assert_eq!(pb::PeerBlock::decode(&whole[PREFIX_LEN..]).unwrap(), b);
        }
    }

    #[tokio::test]
    async fn the_block_is_a_slice_of_the_frame_that_carried_it() {
        let b = block(115_000);
        let [head, data] = encode_reply(b).unwrap();
        let carried = data.clone();
        let frames = frames_of(&[head, data]).await;
        let decoded: pb::PeerBlock = decode_message(frames, "reply", usize::MAX).unwrap();
        assert_eq!(decoded.data.as_ptr(), carried.as_ptr());
    }

    #[tokio::test]
    async fn any_split_into_frames_decodes() {
        let b = block(5_000);
        let [head, data] = encode_reply(b.clone()).unwrap();
        let mut whole = head.to_vec();
        whole.extend_from_slice(&data);
        let whole = Bytes::from(whole);
        for step in [1, 2, 3, 7, 1000, 4096] {
            let parts: Vec<Bytes> = (0..whole.len())
                .step_by(step)
                .map(|i| whole.slice(i..(i + step).min(whole.len())))
                .collect();
            let frames = frames_of(&parts).await;
            let decoded: pb::PeerBlock = decode_message(frames, "reply", usize::MAX).unwrap();
            assert_eq!(decoded, b, "split every {step} bytes");
        }
    }

    #[tokio::test]
    async fn bad_messages_are_refused() {
        let [head, data] = encode_reply(block(1000)).unwrap();
        let whole: Bytes = [head.to_vec(), data.to_vec()].concat().into();
        // Truncated.
        let frames = frames_of(&[whole.slice(..whole.len() - 1)]).await;
        let err = decode_message::<pb::PeerBlock>(frames, "reply", usize::MAX).unwrap_err();
        assert!(err.message().contains("the body holds"), "{err}");
        // Over the limit.
        let frames = frames_of(std::slice::from_ref(&whole)).await;
        let err = decode_message::<pb::PeerBlock>(frames, "reply", 100).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        // Compressed.
        let mut compressed = whole.to_vec();
        compressed[0] = 1;
        let frames = frames_of(&[compressed.into()]).await;
        let err = decode_message::<pb::PeerBlock>(frames, "reply", usize::MAX).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        // Shorter than a prefix.
        let frames = frames_of(&[whole.slice(..3)]).await;
        let err = decode_message::<pb::PeerBlock>(frames, "reply", usize::MAX).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
    }

    #[tokio::test]
    async fn request_round_trips_and_errors_travel_in_trailers() {
        let req = pb::PeerBlockRequest {
            path: "/ds/a.jpg".into(),
            block_id: "ab".into(),
            index: 3,
            ..Default::default()
        };
        let body = Body::new(http_body_util::Full::new(encode_request(&req).unwrap()));
        assert_eq!(read_request(body).await.unwrap(), req);

        let b = block(70_000);
        let got = read_reply(reply(Ok(b.clone())), 1 << 20).await.unwrap();
        assert_eq!(got, b);
        let err = read_reply(reply(Ok(b)), 1000).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);

        let err = read_reply(reply(Err(Status::not_found("no such file"))), 1 << 20)
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "no such file");
    }

    #[tokio::test]
    async fn replies_send_no_empty_data_frames() {
        // h2 closes a connection after 100 empty DATA frames: a warm-up sends thousands of
        // `discard` replies, whose data is empty.
        let empty = pb::PeerBlock {
            data: Bytes::new(),
            crc32c: crc32c::crc32c(&[]),
            was_cached: false,
        };
        let mut body = reply(Ok(empty.clone())).into_body();
        let mut data_frames = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                assert!(!data.is_empty(), "an empty DATA frame");
                data_frames += 1;
            }
        }
        assert_eq!(data_frames, 1);
        assert_eq!(
            read_reply(reply(Ok(empty.clone())), 100).await.unwrap(),
            empty
        );
    }
}
