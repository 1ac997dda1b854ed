//! Small streamed upstream bodies, sent to the browser whole.
//!
//! An upstream that answers without `Content-Length` (`Transfer-Encoding: chunked`: Node's
//! `res.writeHead()` + `res.end(body)`, ASP.NET Core JSON, Go past its buffer; or a body
//! delimited by closing the connection) usually sends head, body and the terminating chunk in
//! one segment. Passed through frame by frame, the browser side would still need two writes:
//! the head and the data as soon as the data frame is out, then the terminating chunk once
//! the upstream connection has decoded it, with a round of task wake-ups in between. Every
//! such response then costs the gateway an extra `writev`, and the browser an extra read.
//!
//! [`gather`] reads such a body for at most [`COALESCE_WINDOW`], [`COALESCE_LIMIT`] bytes and
//! [`COALESCE_FRAMES`] frames before the head goes out. A body that ends within all three is
//! sent whole, with `Content-Length` (a proxy may change the framing: `Transfer-Encoding` is
//! hop-by-hop, RFC 9112 §6.1); anything else is streamed as before, starting with the frames
//! already read. Never held ([`worth_gathering`]): `text/event-stream`, 1xx, 204 and 304
//! answers; the caller also skips DPoP nonce challenges, which it answers by sending the
//! request again. nginx's `proxy_buffering` does the same for the same reason.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// The longest a streamed upstream body is waited for before its head goes to the browser:
/// enough for what arrived in the same segment as the head (the common case), far below
/// anything a user notices. tokio's timer has millisecond resolution, so the wait is between
/// 1 and 2 ms when the body does not end.
pub const COALESCE_WINDOW: Duration = Duration::from_millis(1);

/// The most a streamed upstream body may hold to be sent whole (bytes); a longer one is
/// streamed from its first frame.
pub const COALESCE_LIMIT: usize = 16 * 1024;

/// The most frames a body may arrive in to be sent whole: bounds the memory held while
/// waiting when an upstream sends tiny (or empty) chunks.
pub const COALESCE_FRAMES: usize = 64;

/// What [`gather`] made of an upstream body.
pub enum Gathered {
    /// The whole body, read within the window: send it with `Content-Length`.
    Whole(Bytes),
    /// The body as it was: stream it, starting with the frames already read.
    Streamed(Prefetched),
}

/// Whether a response with this status and headers, whose body has not `ended` yet, is worth
/// gathering: no `Content-Length`, not an event stream, and a status that may have a body at
/// all (never 1xx, 204 or 304, which must not get a `Content-Length` either, RFC 9110 §8.6).
pub fn worth_gathering(status: StatusCode, headers: &HeaderMap, ended: bool) -> bool {
    !ended
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
        && !headers.contains_key(header::CONTENT_LENGTH)
        && !is_event_stream(headers)
}

/// `Content-Type: text/event-stream` (any case, any parameters): server-sent events, whose
/// first event must not wait.
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .get(..17)
                .is_some_and(|p| p.eq_ignore_ascii_case("text/event-stream"))
        })
}

/// Reads `body` for at most [`COALESCE_WINDOW`], [`COALESCE_LIMIT`] bytes and
/// [`COALESCE_FRAMES`] frames.
///
/// # Errors
///
/// The upstream connection's error when the body broke off before the window ended (nothing
/// was sent to the browser yet, so the caller can still answer 502).
pub async fn gather(mut body: Incoming) -> Result<Gathered, hyper::Error> {
    let window = tokio::time::sleep(COALESCE_WINDOW);
    tokio::pin!(window);
    let mut frames: Vec<Frame<Bytes>> = Vec::new();
    let mut size = 0usize;
    loop {
        tokio::select! {
            biased;
            frame = body.frame() => match frame {
                None => return Ok(Gathered::Whole(concat(frames, size))),
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    let trailers = frame.is_trailers();
                    if let Some(data) = frame.data_ref() {
                        size += data.len();
                    }
                    frames.push(frame);
                    // Trailers cannot travel with Content-Length: stream them.
                    if trailers || size > COALESCE_LIMIT || frames.len() >= COALESCE_FRAMES {
                        return Ok(Gathered::Streamed(Prefetched::new(frames, body)));
                    }
                }
            },
            () = &mut window => return Ok(Gathered::Streamed(Prefetched::new(frames, body))),
        }
    }
}

/// The data frames of a whole body, as one buffer.
fn concat(frames: Vec<Frame<Bytes>>, size: usize) -> Bytes {
    let mut data = frames.into_iter().filter_map(|f| f.into_data().ok());
    match (data.next(), data.next()) {
        (None, _) => Bytes::new(),
        (Some(only), None) => only,
        (Some(first), Some(second)) => {
            let mut all = BytesMut::with_capacity(size);
            all.extend_from_slice(&first);
            all.extend_from_slice(&second);
            for more in data {
                all.extend_from_slice(&more);
            }
            all.freeze()
        }
    }
}

/// Sets `Content-Length` for a whole body of `len` bytes.
pub fn set_length(headers: &mut HeaderMap, len: usize) {
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
}

/// An upstream body whose first frames were already read: those, then the rest.
pub struct Prefetched {
    frames: std::vec::IntoIter<Frame<Bytes>>,
    rest: Incoming,
}

impl Prefetched {
    fn new(frames: Vec<Frame<Bytes>>, rest: Incoming) -> Self {
        Self {
            frames: frames.into_iter(),
            rest,
        }
    }
}

impl http_body::Body for Prefetched {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(frame) = self.frames.next() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.len() == 0 && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held: u64 = self
            .frames
            .as_slice()
            .iter()
            .filter_map(Frame::data_ref)
            .map(|d| d.len() as u64)
            .sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(held));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(held));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn event_streams_are_never_held_whatever_the_case_or_parameters() {
        for ct in [
            "text/event-stream",
            "Text/Event-Stream; charset=utf-8",
            " text/event-stream",
        ] {
            assert!(is_event_stream(&headers(&[("content-type", ct)])), "{ct}");
        }
        for ct in [
            "application/json",
            "text/event",
            "text/plain; x=text/event-stream",
        ] {
            assert!(!is_event_stream(&headers(&[("content-type", ct)])), "{ct}");
        }
        assert!(!is_event_stream(&HeaderMap::new()));
    }

    #[test]
    fn only_unframed_bodies_of_statuses_with_a_body_are_gathered() {
        let json = headers(&[("content-type", "application/json")]);
        assert!(worth_gathering(StatusCode::OK, &json, false));
        assert!(worth_gathering(StatusCode::UNAUTHORIZED, &json, false));
        assert!(!worth_gathering(StatusCode::OK, &json, true), "ended");
        let framed = headers(&[("content-length", "5")]);
        assert!(!worth_gathering(StatusCode::OK, &framed, false));
        // An HTTP/2 upstream may send an empty DATA frame after a 204's or 304's head: no
        // Content-Length may be made up for those.
        for status in [
            StatusCode::CONTINUE,
            StatusCode::NO_CONTENT,
            StatusCode::NOT_MODIFIED,
        ] {
            assert!(!worth_gathering(status, &json, false), "{status}");
        }
        let events = headers(&[("content-type", "text/event-stream")]);
        assert!(!worth_gathering(StatusCode::OK, &events, false));
    }

    #[test]
    fn concat_keeps_a_single_frame_without_copying_and_joins_several() {
        let one = Bytes::from_static(b"hello");
        let joined = concat(vec![Frame::data(one.clone())], 5);
        assert_eq!(joined.as_ptr(), one.as_ptr());
        let joined = concat(
            vec![
                Frame::data(Bytes::from_static(b"ab")),
                Frame::data(Bytes::from_static(b"cd")),
                Frame::data(Bytes::from_static(b"e")),
            ],
            5,
        );
        assert_eq!(&joined[..], b"abcde");
        assert!(concat(Vec::new(), 0).is_empty());
    }
}
