//! The Connect protocol (connectrpc.com/docs/protocol) as E2B's in-sandbox daemon speaks
//! it, JSON or protobuf codec (errors are JSON in both): a unary call is a plain JSON body answered by a JSON body (errors:
//! an HTTP status and `{"code", "message"}`); a server-streaming call sends one enveloped
//! message and gets enveloped messages back, the last one flagged end-of-stream and carrying
//! the error, if any. An envelope is one flag byte and a big-endian u32 length.

use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use super::super::api::{full, RespBody};

/// Envelope flag: the message is compressed (never sent by us; refused when received).
const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: the end-of-stream message.
const FLAG_END: u8 = 0x02;

/// A Connect error code (the wire names), with the HTTP status a unary answer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Unimplemented,
    Internal,
    Unavailable,
    Unauthenticated,
}

impl Code {
    pub fn name(self) -> &'static str {
        match self {
            Code::InvalidArgument => "invalid_argument",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary answer (and of the plain `/files` endpoints).
    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }

    /// The code for an HTTP status of nsbox's own file layer.
    pub fn from_status(status: u16) -> Code {
        match status {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::AlreadyExists,
            413 | 429 => Code::ResourceExhausted,
            501 => Code::Unimplemented,
            503 => Code::Unavailable,
            _ => Code::Internal,
        }
    }
}

/// A Connect error.
#[derive(Debug)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.name(), "message": self.message})
    }

    /// The answer to a unary call.
    pub fn unary(&self) -> Response<RespBody> {
        let mut resp = Response::new(full(self.json().to_string()));
        *resp.status_mut() = self.code.status();
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp
    }

    /// The answer to a streaming call that failed before its stream began: the protocol
    /// sends errors in the end-of-stream message, with status 200.
    pub fn stream(&self) -> Response<RespBody> {
        let mut resp = Response::new(full(end_frame(Some(self))));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/connect+json"),
        );
        resp
    }
}

/// The message codec of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Json,
    Proto,
}

/// The codec a request's content type names (`streaming`: the `application/connect+…` form).
pub fn codec(content_type: Option<&str>, streaming: bool) -> Result<Codec, RpcError> {
    let ct = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let name = if streaming {
        ct.strip_prefix("application/connect+")
    } else {
        ct.strip_prefix("application/")
    };
    match name {
        Some("json") => Ok(Codec::Json),
        Some("proto") => Ok(Codec::Proto),
        _ => Err(RpcError::new(
            Code::Unimplemented,
            format!("content type {ct:?} is not served: the Connect protocol with the JSON or protobuf codec is"),
        )),
    }
}

impl Codec {
    /// The content type of answers.
    pub fn content_type(self, streaming: bool) -> &'static str {
        match (self, streaming) {
            (Codec::Json, false) => "application/json",
            (Codec::Proto, false) => "application/proto",
            (Codec::Json, true) => "application/connect+json",
            (Codec::Proto, true) => "application/connect+proto",
        }
    }
}

/// One message frame.
pub fn frame(message: &serde_json::Value) -> Bytes {
    envelope(0, message.to_string().as_bytes())
}

/// One message frame of already encoded bytes.
pub fn frame_bytes(message: &[u8]) -> Bytes {
    envelope(0, message)
}

/// The end-of-stream frame (with the error, if the call failed).
pub fn end_frame(error: Option<&RpcError>) -> Bytes {
    let body = match error {
        Some(e) => serde_json::json!({ "error": e.json() }),
        None => serde_json::json!({}),
    };
    envelope(FLAG_END, body.to_string().as_bytes())
}

fn envelope(flag: u8, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(flag);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// The single message of a server-streaming request (its body is one envelope).
pub fn unwrap_request(body: &[u8]) -> Result<&[u8], RpcError> {
    let bad = |m: &str| RpcError::new(Code::InvalidArgument, m.to_string());
    let (&flag, rest) = body.split_first().ok_or_else(|| bad("empty request"))?;
    if flag & FLAG_COMPRESSED != 0 {
        return Err(RpcError::new(
            Code::Unimplemented,
            "compressed messages are not served",
        ));
    }
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("a truncated envelope"))?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    rest.get(4..4 + len)
        .filter(|_| rest.len() == 4 + len)
        .ok_or_else(|| bad("the envelope's length does not match its body"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let f = frame(&serde_json::json!({"a": 1}));
        assert_eq!(f[0], 0);
        assert_eq!(u32::from_be_bytes([f[1], f[2], f[3], f[4]]), 7);
        assert_eq!(unwrap_request(&f).unwrap(), b"{\"a\":1}");
        let end = end_frame(Some(&RpcError::new(Code::NotFound, "x")));
        assert_eq!(end[0], FLAG_END);
        assert!(unwrap_request(&end[..4]).is_err());
        let mut long = f.to_vec();
        long.push(b' ');
        assert!(unwrap_request(&long).is_err());
    }

    #[test]
    fn codecs_by_content_type() {
        assert_eq!(
            codec(Some("application/connect+json"), true).unwrap(),
            Codec::Json
        );
        assert_eq!(
            codec(Some("application/json; charset=utf-8"), false).unwrap(),
            Codec::Json
        );
        assert_eq!(
            codec(Some("application/connect+proto"), true).unwrap(),
            Codec::Proto
        );
        assert_eq!(
            codec(Some("application/proto"), false).unwrap(),
            Codec::Proto
        );
        assert!(codec(Some("application/json"), true).is_err());
        assert!(codec(Some("application/grpc"), false).is_err());
    }
}
