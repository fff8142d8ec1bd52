//! Files through the API (the routes; the work is [`crate::serve::files`]) and the network log.

use super::*;

/// The last `cap` bytes of a log file (empty if there is none yet), from its first whole line.
pub(super) fn read_tail(path: &std::path::Path, cap: usize) -> Result<Vec<u8>, ApiError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ApiError::internal(format!("{}: {e}", path.display()))),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(cap as u64);
    let mut data = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.take(cap as u64).read_to_end(&mut data))
        .map_err(|e| ApiError::internal(format!("{}: {e}", path.display())))?;
    if start > 0 {
        let first_line = data.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
        data.drain(..first_line);
    }
    Ok(data)
}

impl Server {
    pub(super) async fn files(
        &self,
        req: Req,
        id: &str,
        rest: &[&str],
        path: String,
        tar: bool,
    ) -> Result<Response<RespBody>, ApiError> {
        let method = req.method().clone();
        let client = self.client(id).await?;
        let fe = |e: crate::serve::files::FileError| ApiError {
            status: StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            code: e.code,
            message: e.message,
            hint: None,
            retry_after: None,
            exit_code: None,
        };
        let ok = || json_response(StatusCode::OK, &serde_json::json!({"ok": true}));
        match (&method, rest) {
            (&Method::GET, []) if tar => {
                let data = blocking(move || {
                    crate::serve::files::read_tar(&client, &path, MAX_FILE_READ).map_err(fe)
                })
                .await?;
                let mut resp = Response::new(full(data));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
                Ok(resp)
            }
            (&Method::PUT, []) if tar => {
                let data = body_bytes(req, self.options.max_body).await?;
                let written = blocking(move || {
                    crate::serve::files::write_tar(&client, &path, &data).map_err(fe)
                })
                .await?;
                Ok(json_response(
                    StatusCode::OK,
                    &serde_json::json!({"ok": true, "entries": written}),
                ))
            }
            (&Method::GET, []) => {
                let data = blocking(move || {
                    crate::serve::files::read(&client, &path, MAX_FILE_READ).map_err(fe)
                })
                .await?;
                let mut resp = Response::new(full(data));
                resp.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                Ok(resp)
            }
            (&Method::PUT, []) => {
                let data = body_bytes(req, self.options.max_body).await?;
                blocking(move || {
                    crate::serve::files::write(&client, &path, &data, false).map_err(fe)
                })
                .await?;
                Ok(ok())
            }
            (&Method::DELETE, []) => {
                blocking(move || crate::serve::files::remove(&client, &path).map_err(fe)).await?;
                Ok(ok())
            }
            (&Method::GET, ["stat"]) => {
                let v =
                    blocking(move || crate::serve::files::stat(&client, &path).map_err(fe)).await?;
                Ok(json_response(StatusCode::OK, &v))
            }
            (&Method::GET, ["list"]) => {
                let v = blocking(move || {
                    crate::serve::files::list(&client, &path, MAX_LIST).map_err(fe)
                })
                .await?;
                Ok(json_response(StatusCode::OK, &v))
            }
            (&Method::POST, ["mkdir"]) => {
                blocking(move || crate::serve::files::mkdir(&client, &path, false).map_err(fe))
                    .await?;
                Ok(ok())
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                format!("no {method} on files/{}", rest.join("/")),
            )),
        }
    }
}
