//! A small blocking client of `nsbox serve` for programs that embed nsbox: HTTP/1.1 over the
//! unix socket or plain TCP (one connection per call), JSON in and out, errors as the
//! server's `{code, message, hint}`.
//!
//! ```no_run
//! use nsbox::serve::client::ServeClient;
//! let api = ServeClient::unix("/run/nsbox/serve.sock");
//! let sandbox = api.create(&serde_json::json!({"labels": {"job": "7"}}))?;
//! let id = sandbox["id"].as_str().unwrap_or_default();
//! api.write_file(id, "/sandbox/hello.txt", b"hi")?;
//! let result = api.run(id, &serde_json::json!({"argv": ["cat", "hello.txt"]}))?;
//! assert_eq!(result["stdout"], "hi");
//! api.delete(id)?;
//! # Ok::<(), nsbox::serve::client::ClientError>(())
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;

/// Largest response header block accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{status} {code}: {message}{}", hint.as_ref().map(|h| format!(" — hint: {h}")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        message: String,
        hint: Option<String>,
    },
    #[error("talk to the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server's answer: {0}")]
    Protocol(String),
}

#[derive(Debug, Clone)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

/// A client of one server.
#[derive(Debug, Clone)]
pub struct ServeClient {
    endpoint: Endpoint,
    token: Option<String>,
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

impl ServeClient {
    /// The server on a unix socket (no key needed there).
    pub fn unix(path: impl Into<PathBuf>) -> ServeClient {
        ServeClient {
            endpoint: Endpoint::Unix(path.into()),
            token: None,
        }
    }

    /// The server at `host:port` over plain TCP (loopback); a key is needed.
    pub fn tcp(addr: impl Into<String>, token: impl Into<String>) -> ServeClient {
        ServeClient {
            endpoint: Endpoint::Tcp(addr.into()),
            token: Some(token.into()),
        }
    }

    pub fn with_token(mut self, token: impl Into<String>) -> ServeClient {
        self.token = Some(token.into());
        self
    }

    fn connect(&self) -> Result<Box<dyn Stream>, ClientError> {
        Ok(match &self.endpoint {
            Endpoint::Unix(path) => Box::new(std::os::unix::net::UnixStream::connect(path)?),
            Endpoint::Tcp(addr) => Box::new(std::net::TcpStream::connect(addr)?),
        })
    }

    /// Sends one request; returns the status and a reader of the (de-chunked) body.
    fn send(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Box<dyn BufRead>), ClientError> {
        let mut stream = self.connect()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: nsbox\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()?;
        let mut reader = BufReader::new(stream);
        let mut status_line = String::new();
        reader.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::Protocol(format!("status line {status_line:?}")))?;
        let (mut chunked, mut length, mut seen) = (false, None, 0);
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line)?;
            seen += n;
            if n == 0 || seen > MAX_HEAD {
                return Err(ClientError::Protocol(
                    "headers cut short or too long".into(),
                ));
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    "content-length" => length = value.parse::<u64>().ok(),
                    _ => {}
                }
            }
        }
        let body: Box<dyn BufRead> = if chunked {
            Box::new(BufReader::new(Chunked {
                inner: reader,
                left: 0,
                done: false,
            }))
        } else if let Some(len) = length {
            Box::new(reader.take(len))
        } else {
            Box::new(reader)
        };
        Ok((status, body))
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        let (status, mut reader) = self.send(method, path, content_type, body)?;
        let mut data = Vec::new();
        reader.read_to_end(&mut data)?;
        if !(200..300).contains(&status) {
            return Err(api_error(status, &data));
        }
        Ok(data)
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let data = self.call(
            method,
            path,
            "application/json",
            body.as_deref().unwrap_or_default(),
        )?;
        serde_json::from_slice(&data).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST /v1/sandboxes`: the new sandbox.
    pub fn create(&self, request: &serde_json::Value) -> Result<serde_json::Value, ClientError> {
        self.json("POST", "/v1/sandboxes", Some(request))
    }

    /// `GET /v1/sandboxes` (optionally those with the label `KEY=VALUE`).
    pub fn list(&self, label: Option<&str>) -> Result<Vec<serde_json::Value>, ClientError> {
        let path = match label {
            Some(l) => format!("/v1/sandboxes?label={}", encode(l)),
            None => "/v1/sandboxes".into(),
        };
        let v = self.json("GET", &path, None)?;
        Ok(v["sandboxes"].as_array().cloned().unwrap_or_default())
    }

    pub fn get(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        self.json("GET", &format!("/v1/sandboxes/{}", encode(id)), None)
    }

    pub fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.json("DELETE", &format!("/v1/sandboxes/{}", encode(id)), None)
            .map(drop)
    }

    /// Runs a command to its end (`?wait=true`): exit_code, stdout, stderr, ...
    pub fn run(
        &self,
        id: &str,
        command: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.json(
            "POST",
            &format!("/v1/sandboxes/{}/commands?wait=true", encode(id)),
            Some(command),
        )
    }

    /// Runs a command, handing each streamed event to `on_event` as it arrives; returns the
    /// last event (`exit`, or `error`).
    pub fn run_streaming(
        &self,
        id: &str,
        command: &serde_json::Value,
        mut on_event: impl FnMut(&serde_json::Value),
    ) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::to_vec(command).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let (status, reader) = self.send(
            "POST",
            &format!("/v1/sandboxes/{}/commands", encode(id)),
            "application/json",
            &body,
        )?;
        if !(200..300).contains(&status) {
            let mut data = Vec::new();
            reader.take(MAX_HEAD as u64).read_to_end(&mut data)?;
            return Err(api_error(status, &data));
        }
        let mut last = serde_json::Value::Null;
        for line in reader.lines() {
            let event: serde_json::Value =
                serde_json::from_str(&line?).map_err(|e| ClientError::Protocol(e.to_string()))?;
            on_event(&event);
            last = event;
        }
        Ok(last)
    }

    pub fn write_file(&self, id: &str, path: &str, data: &[u8]) -> Result<(), ClientError> {
        self.call(
            "PUT",
            &format!("/v1/sandboxes/{}/files?path={}", encode(id), encode(path)),
            "application/octet-stream",
            data,
        )
        .map(drop)
    }

    pub fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, ClientError> {
        self.call(
            "GET",
            &format!("/v1/sandboxes/{}/files?path={}", encode(id), encode(path)),
            "application/octet-stream",
            &[],
        )
    }
}

fn api_error(status: u16, body: &[u8]) -> ClientError {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    ClientError::Api {
        status,
        code: v["code"].as_str().unwrap_or("unknown").to_string(),
        message: v["message"].as_str().map_or_else(
            || String::from_utf8_lossy(body).into_owned(),
            str::to_string,
        ),
        hint: v["hint"].as_str().map(str::to_string),
    }
}

/// A chunked transfer-encoded body.
struct Chunked<R> {
    inner: R,
    left: u64,
    done: bool,
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut line = String::new();
            self.inner.read_line(&mut line)?;
            let size = line.trim().split(';').next().unwrap_or_default();
            self.left = u64::from_str_radix(size, 16)
                .map_err(|_| std::io::Error::other(format!("bad chunk size {line:?}")))?;
            if self.left == 0 {
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        if self.left == 0 {
            let mut crlf = String::new();
            self.inner.read_line(&mut crlf)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_are_decoded() {
        let raw = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let mut out = String::new();
        Chunked {
            inner: &raw[..],
            left: 0,
            done: false,
        }
        .read_to_string(&mut out)
        .unwrap();
        assert_eq!(out, "hello world");
        assert_eq!(encode("a b/c=d"), "a%20b/c%3Dd");
    }
}
