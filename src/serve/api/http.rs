//! The HTTP layer of the API: the error shape, response bodies, query and body parsing.

use super::*;

pub(in crate::serve) type RespBody = BoxBody<Bytes, Infallible>;

/// A request whose body was read before routing (see `Server::handle`).
pub(super) type Req = Request<Full<Bytes>>;

/// Reads what is left of a refused request's body (bounded in size and time): hyper closes a
/// connection whose request body was not read, and a client that reuses it from its pool then
/// fails its next request instead of reading this refusal.
pub(super) async fn drain(req: Request<Incoming>) {
    let body = Limited::new(req.into_body(), 1 << 20);
    let _ = tokio::time::timeout(Duration::from_secs(5), body.collect()).await;
}

/// An error answer: `{"code", "message", "hint"}`.
#[derive(Debug)]
pub(in crate::serve) struct ApiError {
    pub(in crate::serve) status: StatusCode,
    pub(in crate::serve) code: &'static str,
    pub(in crate::serve) message: String,
    pub(super) hint: Option<String>,
    pub(super) retry_after: Option<u64>,
    /// The nsbox exit code of the failure, when there is one (a create that failed, a command
    /// that could not start): `nsbox --host` exits with it, as the local run would have.
    pub(super) exit_code: Option<i32>,
}

impl ApiError {
    pub(in crate::serve) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            hint: None,
            retry_after: None,
            exit_code: None,
        }
    }
    pub(super) fn hint(mut self, hint: impl Into<String>) -> ApiError {
        self.hint = Some(hint.into());
        self
    }
    pub(super) fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub(super) fn not_found(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "sandbox_not_found",
            format!("no sandbox {id} (of this key)"),
        )
        .hint("GET /v1/sandboxes lists the sandboxes this key owns")
    }
    pub(super) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
    pub(super) fn response(&self) -> Response<RespBody> {
        let mut body = serde_json::json!({
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
        });
        if let Some(code) = self.exit_code {
            body["exit_code"] = code.into();
        }
        let mut resp = json_response(self.status, &body);
        resp.headers_mut()
            .insert("x-nsbox-error", HeaderValue::from_static(self.code));
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
        }
        resp
    }
}

pub(in crate::serve) fn full(bytes: impl Into<Bytes>) -> RespBody {
    Full::new(bytes.into()).boxed()
}

pub(in crate::serve) fn json_response(
    status: StatusCode,
    value: &serde_json::Value,
) -> Response<RespBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A response body fed by a channel: the stream of a running command.
pub(in crate::serve) struct ChannelBody {
    pub(in crate::serve) rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Decodes `%XX` and `+` in a query value.
pub(super) fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::bad("a bad %-escape in the query"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| ApiError::bad("the query is not UTF-8"))
}

pub(super) fn query<B>(req: &Request<B>) -> Result<Vec<(String, String)>, ApiError> {
    let mut pairs = Vec::new();
    for part in req.uri().query().unwrap_or("").split('&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        pairs.push((percent_decode(k)?, percent_decode(v)?));
    }
    Ok(pairs)
}

pub(super) fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub(super) fn flag(q: &[(String, String)], name: &str) -> bool {
    matches!(param(q, name), Some("" | "1" | "true" | "yes"))
}

/// Reads the body, at most `cap` bytes (413 beyond).
pub(in crate::serve) async fn body_bytes<B>(req: Request<B>, cap: usize) -> Result<Bytes, ApiError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let collect = Limited::new(req.into_body(), cap).collect();
    let Ok(collected) = tokio::time::timeout(BODY_TIMEOUT, collect).await else {
        return Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {}s",
                BODY_TIMEOUT.as_secs()
            ),
        ));
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body is larger than {cap} bytes"),
        )),
        Err(e) => Err(ApiError::bad(format!("reading the body: {e}"))),
    }
}

pub(super) async fn json_body<T: serde::de::DeserializeOwned>(req: Req) -> Result<T, ApiError> {
    let bytes = body_bytes(req, MAX_JSON).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            format!("the request body: {e}"),
        )
        .hint("see /v1/openapi.json for the fields each request takes")
    })
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("a worker failed: {e}")))?
}
