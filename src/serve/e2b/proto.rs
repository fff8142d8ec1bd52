//! The protobuf codec of the envd services (`application/proto`, `application/connect+proto`),
//! for clients that do not use JSON. The messages are written by hand from E2B's
//! `process.proto` and `filesystem.proto` (field numbers as there), and converted to and from
//! the protobuf-JSON shapes the handlers work with, so both codecs share one code path.

use base64::Engine;
use prost::Message;
use serde_json::{json, Value};

use super::connect::{Code, RpcError};

#[derive(Clone, PartialEq, Message)]
pub struct ProcessConfig {
    #[prost(string, tag = "1")]
    pub cmd: String,
    #[prost(string, repeated, tag = "2")]
    pub args: Vec<String>,
    #[prost(map = "string, string", tag = "3")]
    pub envs: std::collections::HashMap<String, String>,
    #[prost(string, optional, tag = "4")]
    pub cwd: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Pty {
    #[prost(bytes = "vec", tag = "1")]
    pub size: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct StartRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessConfig>,
    #[prost(message, optional, tag = "2")]
    pub pty: Option<Pty>,
    #[prost(string, optional, tag = "3")]
    pub tag: Option<String>,
    #[prost(bool, optional, tag = "4")]
    pub stdin: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
pub struct StartEvent {
    #[prost(uint32, tag = "1")]
    pub pid: u32,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Output {
    #[prost(bytes, tag = "1")]
    Stdout(Vec<u8>),
    #[prost(bytes, tag = "2")]
    Stderr(Vec<u8>),
}

#[derive(Clone, PartialEq, Message)]
pub struct DataEvent {
    #[prost(oneof = "Output", tags = "1, 2")]
    pub output: Option<Output>,
}

#[derive(Clone, PartialEq, Message)]
pub struct EndEvent {
    #[prost(sint32, tag = "1")]
    pub exit_code: i32,
    #[prost(bool, tag = "2")]
    pub exited: bool,
    #[prost(string, tag = "3")]
    pub status: String,
    #[prost(string, optional, tag = "4")]
    pub error: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Empty {}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Event {
    #[prost(message, tag = "1")]
    Start(StartEvent),
    #[prost(message, tag = "2")]
    Data(DataEvent),
    #[prost(message, tag = "3")]
    End(EndEvent),
    #[prost(message, tag = "4")]
    Keepalive(Empty),
}

#[derive(Clone, PartialEq, Message)]
pub struct ProcessEvent {
    #[prost(oneof = "Event", tags = "1, 2, 3, 4")]
    pub event: Option<Event>,
}

#[derive(Clone, PartialEq, Message)]
pub struct StartResponse {
    #[prost(message, optional, tag = "1")]
    pub event: Option<ProcessEvent>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Selector {
    #[prost(uint32, tag = "1")]
    Pid(u32),
    #[prost(string, tag = "2")]
    Tag(String),
}

#[derive(Clone, PartialEq, Message)]
pub struct ProcessSelector {
    #[prost(oneof = "Selector", tags = "1, 2")]
    pub selector: Option<Selector>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SendSignalRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
    #[prost(int32, tag = "2")]
    pub signal: i32,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Input {
    #[prost(bytes, tag = "1")]
    Stdin(Vec<u8>),
    #[prost(bytes, tag = "2")]
    Pty(Vec<u8>),
}

#[derive(Clone, PartialEq, Message)]
pub struct ProcessInput {
    #[prost(oneof = "Input", tags = "1, 2")]
    pub input: Option<Input>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SendInputRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
    #[prost(message, optional, tag = "2")]
    pub input: Option<ProcessInput>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SelectRequest {
    #[prost(message, optional, tag = "1")]
    pub process: Option<ProcessSelector>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProcessInfo {
    #[prost(message, optional, tag = "1")]
    pub config: Option<ProcessConfig>,
    #[prost(uint32, tag = "2")]
    pub pid: u32,
    #[prost(string, optional, tag = "3")]
    pub tag: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListResponse {
    #[prost(message, repeated, tag = "1")]
    pub processes: Vec<ProcessInfo>,
}

/// A request with only a path (Stat, MakeDir, Remove) or a path and a depth (ListDir) or the
/// watcher fields (CreateWatcher).
#[derive(Clone, PartialEq, Message)]
pub struct PathRequest {
    #[prost(string, tag = "1")]
    pub path: String,
    #[prost(uint32, tag = "2")]
    pub depth_or_recursive: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct MoveRequest {
    #[prost(string, tag = "1")]
    pub source: String,
    #[prost(string, tag = "2")]
    pub destination: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct WatcherRequest {
    #[prost(string, tag = "1")]
    pub watcher_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct EntryInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "2")]
    pub r#type: i32,
    #[prost(string, tag = "3")]
    pub path: String,
    #[prost(int64, tag = "4")]
    pub size: i64,
    #[prost(uint32, tag = "5")]
    pub mode: u32,
    #[prost(string, tag = "6")]
    pub permissions: String,
    #[prost(string, tag = "7")]
    pub owner: String,
    #[prost(string, tag = "8")]
    pub group: String,
    #[prost(message, optional, tag = "9")]
    pub modified_time: Option<Timestamp>,
}

#[derive(Clone, PartialEq, Message)]
pub struct EntryResponse {
    #[prost(message, optional, tag = "1")]
    pub entry: Option<EntryInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListDirResponse {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<EntryInfo>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CreateWatcherResponse {
    #[prost(string, tag = "1")]
    pub watcher_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct FilesystemEvent {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "2")]
    pub r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct WatcherEventsResponse {
    #[prost(message, repeated, tag = "1")]
    pub events: Vec<FilesystemEvent>,
}

fn bad(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(Code::InvalidArgument, format!("not a valid message: {e}"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or(""))
        .unwrap_or_default()
}

fn selector_json(s: Option<ProcessSelector>) -> Value {
    match s.and_then(|s| s.selector) {
        Some(Selector::Pid(pid)) => json!({ "pid": pid }),
        Some(Selector::Tag(tag)) => json!({ "tag": tag }),
        None => json!({}),
    }
}

fn config_json(c: &ProcessConfig) -> Value {
    json!({"cmd": c.cmd, "args": c.args, "envs": c.envs, "cwd": c.cwd})
}

/// A request of `service/Method` as its protobuf-JSON form.
pub fn request(method: &str, bytes: &[u8]) -> Result<Value, RpcError> {
    Ok(match method {
        "process.Process/Start" => {
            let r = StartRequest::decode(bytes).map_err(bad)?;
            let mut v = json!({});
            if let Some(p) = &r.process {
                v["process"] = config_json(p);
            }
            if r.pty.is_some() {
                v["pty"] = json!({});
            }
            if let Some(tag) = r.tag {
                v["tag"] = tag.into();
            }
            if let Some(stdin) = r.stdin {
                v["stdin"] = stdin.into();
            }
            v
        }
        "process.Process/List" => json!({}),
        "process.Process/SendSignal" => {
            let r = SendSignalRequest::decode(bytes).map_err(bad)?;
            json!({"process": selector_json(r.process), "signal": r.signal})
        }
        "process.Process/SendInput" => {
            let r = SendInputRequest::decode(bytes).map_err(bad)?;
            let input = match r.input.and_then(|i| i.input) {
                Some(Input::Stdin(d)) => json!({ "stdin": b64(&d) }),
                Some(Input::Pty(d)) => json!({ "pty": b64(&d) }),
                None => json!({}),
            };
            json!({"process": selector_json(r.process), "input": input})
        }
        // ConnectRequest and CloseStdinRequest are both a selector in field 1.
        "process.Process/CloseStdin" | "process.Process/Connect" => {
            let r = SelectRequest::decode(bytes).map_err(bad)?;
            json!({ "process": selector_json(r.process) })
        }
        "filesystem.Filesystem/ListDir" => {
            let r = PathRequest::decode(bytes).map_err(bad)?;
            json!({"path": r.path, "depth": r.depth_or_recursive})
        }
        "filesystem.Filesystem/CreateWatcher" => {
            let r = PathRequest::decode(bytes).map_err(bad)?;
            json!({"path": r.path, "recursive": r.depth_or_recursive != 0})
        }
        "filesystem.Filesystem/Stat"
        | "filesystem.Filesystem/MakeDir"
        | "filesystem.Filesystem/Remove" => {
            let r = PathRequest::decode(bytes).map_err(bad)?;
            json!({ "path": r.path })
        }
        "filesystem.Filesystem/Move" => {
            let r = MoveRequest::decode(bytes).map_err(bad)?;
            json!({"source": r.source, "destination": r.destination})
        }
        "filesystem.Filesystem/GetWatcherEvents" | "filesystem.Filesystem/RemoveWatcher" => {
            let r = WatcherRequest::decode(bytes).map_err(bad)?;
            json!({ "watcherId": r.watcher_id })
        }
        other => {
            return Err(RpcError::new(
                Code::Unimplemented,
                format!("{other} is not served by nsbox yet"),
            ))
        }
    })
}

/// "YYYY-MM-DDTHH:MM:SSZ" (as `crate::units::rfc3339` writes it) in Unix seconds.
fn unix_seconds(t: &str) -> Option<i64> {
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    let days = crate::units::days_from_civil(y, m, d);
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

fn entry(v: &Value) -> EntryInfo {
    let kind = match v["type"].as_str() {
        Some("FILE_TYPE_FILE") => 1,
        Some("FILE_TYPE_DIRECTORY") => 2,
        Some("FILE_TYPE_SYMLINK") => 3,
        _ => 0,
    };
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    EntryInfo {
        name: s("name"),
        r#type: kind,
        path: s("path"),
        size: v["size"].as_str().and_then(|n| n.parse().ok()).unwrap_or(0),
        mode: v["mode"].as_u64().unwrap_or(0) as u32,
        permissions: s("permissions"),
        owner: s("owner"),
        group: s("group"),
        modified_time: v["modifiedTime"]
            .as_str()
            .and_then(unix_seconds)
            .map(|seconds| Timestamp { seconds, nanos: 0 }),
    }
}

/// A process event (the `StartResponse` JSON) as protobuf.
pub fn event(v: &Value) -> Vec<u8> {
    let e = &v["event"];
    let event = if let Some(start) = e.get("start") {
        Event::Start(StartEvent {
            pid: start["pid"].as_u64().unwrap_or(0) as u32,
        })
    } else if let Some(data) = e.get("data") {
        Event::Data(DataEvent {
            output: Some(match data.get("stdout") {
                Some(d) => Output::Stdout(unb64(d)),
                None => Output::Stderr(unb64(&data["stderr"])),
            }),
        })
    } else if let Some(end) = e.get("end") {
        Event::End(EndEvent {
            exit_code: end["exitCode"].as_i64().unwrap_or(0) as i32,
            exited: end["exited"].as_bool().unwrap_or(false),
            status: end["status"].as_str().unwrap_or("").to_string(),
            error: end["error"].as_str().map(str::to_string),
        })
    } else {
        Event::Keepalive(Empty {})
    };
    StartResponse {
        event: Some(ProcessEvent { event: Some(event) }),
    }
    .encode_to_vec()
}

/// The answer of `service/Method` (its protobuf-JSON form) as protobuf.
pub fn answer(method: &str, v: &Value) -> Vec<u8> {
    match method {
        "process.Process/List" => ListResponse {
            processes: v["processes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    let c = &p["config"];
                    ProcessInfo {
                        config: Some(ProcessConfig {
                            cmd: c["cmd"].as_str().unwrap_or("").to_string(),
                            args: c["args"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter_map(|a| a.as_str().map(str::to_string))
                                .collect(),
                            envs: c["envs"]
                                .as_object()
                                .into_iter()
                                .flatten()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                                .collect(),
                            cwd: c["cwd"].as_str().map(str::to_string),
                        }),
                        pid: p["pid"].as_u64().unwrap_or(0) as u32,
                        tag: p["tag"].as_str().map(str::to_string),
                    }
                })
                .collect(),
        }
        .encode_to_vec(),
        "filesystem.Filesystem/Stat"
        | "filesystem.Filesystem/MakeDir"
        | "filesystem.Filesystem/Move" => EntryResponse {
            entry: Some(entry(&v["entry"])),
        }
        .encode_to_vec(),
        "filesystem.Filesystem/ListDir" => ListDirResponse {
            entries: v["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(entry)
                .collect(),
        }
        .encode_to_vec(),
        "filesystem.Filesystem/CreateWatcher" => CreateWatcherResponse {
            watcher_id: v["watcherId"].as_str().unwrap_or("").to_string(),
        }
        .encode_to_vec(),
        "filesystem.Filesystem/GetWatcherEvents" => WatcherEventsResponse {
            events: v["events"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| FilesystemEvent {
                    name: e["name"].as_str().unwrap_or("").to_string(),
                    r#type: match e["type"].as_str() {
                        Some("EVENT_TYPE_CREATE") => 1,
                        Some("EVENT_TYPE_WRITE") => 2,
                        Some("EVENT_TYPE_REMOVE") => 3,
                        Some("EVENT_TYPE_RENAME") => 4,
                        Some("EVENT_TYPE_CHMOD") => 5,
                        _ => 0,
                    },
                })
                .collect(),
        }
        .encode_to_vec(),
        // The empty answers (Remove, SendSignal, SendInput, CloseStdin, RemoveWatcher).
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_to_the_json_shapes() {
        let start = StartRequest {
            process: Some(ProcessConfig {
                cmd: "/bin/sh".into(),
                args: vec!["-c".into(), "true".into()],
                envs: [("A".to_string(), "1".to_string())].into(),
                cwd: None,
            }),
            pty: None,
            tag: None,
            stdin: Some(true),
        };
        let v = request("process.Process/Start", &start.encode_to_vec()).unwrap();
        assert_eq!(v["process"]["args"], json!(["-c", "true"]));
        assert_eq!(v["process"]["envs"]["A"], "1");
        assert_eq!(v["stdin"], true);
        assert!(v.get("pty").is_none());
        assert!(request("process.Process/Start", b"\xff\xff").is_err());
        assert!(request("process.Process/Update", b"").is_err());
    }

    #[test]
    fn timestamps_round_trip() {
        for t in [0, 951_782_400, 1_796_428_799] {
            assert_eq!(unix_seconds(&crate::units::rfc3339(t)), Some(t as i64));
        }
    }

    #[test]
    fn events_encode_as_start_responses() {
        let end = json!({"event": {"end": {"exitCode": -3, "exited": true, "status": "x"}}});
        let decoded = StartResponse::decode(&event(&end)[..]).unwrap();
        match decoded.event.unwrap().event.unwrap() {
            Event::End(e) => assert_eq!((e.exit_code, e.exited), (-3, true)),
            other => panic!("{other:?}"),
        }
        let data = json!({"event": {"data": {"stdout": b64(b"hi")}}});
        let decoded = StartResponse::decode(&event(&data)[..]).unwrap();
        assert_eq!(
            decoded.event.unwrap().event.unwrap(),
            Event::Data(DataEvent {
                output: Some(Output::Stdout(b"hi".to_vec()))
            })
        );
    }
}
