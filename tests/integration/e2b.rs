//! E2B compatibility (src/serve/e2b/): the real E2B Python SDK, from PyPI, drives `nsbox
//! serve` on loopback with only `E2B_API_URL`, `E2B_SANDBOX_URL` and `E2B_API_KEY` set.
//!
//! The SDK lives in a private virtual environment at `.venv-e2b` in the repository, made by
//! .ci/run (`python3 -m venv .venv-e2b && .venv-e2b/bin/pip install e2b`); the JS SDK (`e2b`
//! from npm) in `.npm-e2b/node_modules`, also made by .ci/run. Without them the tests skip
//! loudly, or fail under NSBOX_TEST_REQUIRE_ROOT=1 (as in CI).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use crate::require_root;
use crate::support::{nsbox_bin, nsbox_cmd, test_config, test_run_dir};

/// The virtual environment's Python, if .ci/run (or a developer) made it.
fn sdk_python(test: &str) -> Option<PathBuf> {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-e2b/bin/python");
    if python.exists() {
        return Some(python);
    }
    let how = "make it with `python3 -m venv .venv-e2b && .venv-e2b/bin/pip install e2b` in the repository (.ci/run does)";
    if std::env::var("NSBOX_TEST_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!(
            "{test}: the E2B SDK's virtual environment {} is missing — {how}",
            python.display()
        );
    }
    eprintln!("SKIP {test}: no E2B SDK at {} — {how}", python.display());
    None
}

/// The directory with the JS SDK in its node_modules, if .ci/run (or a developer) made it.
fn sdk_js(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".npm-e2b");
    if dir.join("node_modules/e2b/package.json").exists() {
        return Some(dir);
    }
    let how = "make it with `mkdir -p .npm-e2b && cd .npm-e2b && npm install e2b` in the repository (.ci/run does)";
    if std::env::var("NSBOX_TEST_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!(
            "{test}: the E2B JS SDK in {} is missing — {how}",
            dir.display()
        );
    }
    eprintln!("SKIP {test}: no E2B JS SDK in {} — {how}", dir.display());
    None
}

/// `nsbox serve` on a loopback port of its own, with a state root of its own.
struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    url: String,
    /// The network namespace (under /run/netns) the server and the SDK programs run in.
    netns: Option<String>,
}

/// `cmd` run in network namespace `netns` (`nsenter --net`), or as it is.
fn in_netns(cmd: Command, netns: Option<&str>) -> Command {
    let Some(ns) = netns else {
        return cmd;
    };
    let mut wrapped = Command::new("nsenter");
    wrapped
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

impl Server {
    fn start() -> Server {
        Server::start_in(None, &[])
    }

    /// The server in network namespace `netns`, with more `nsbox` flags (`--config`) first.
    fn start_in(netns: Option<&str>, flags: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("nsbox-e2b-")
            .tempdir()
            .unwrap();
        let state = dir.path().join("state");
        let socket = dir.path().join("serve.sock");
        let mut args = flags.to_vec();
        args.extend_from_slice(&[
            "--state-root",
            state.to_str().unwrap(),
            "serve",
            "--socket",
            socket.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        let mut child = in_netns(nsbox_cmd(&args), netns)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start nsbox serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let url = format!("http://{}", ready["tcp"].as_str().unwrap());
        Server {
            child: Some(child),
            dir,
            url,
            netns: netns.map(str::to_string),
        }
    }

    fn key(&self, name: &str) -> String {
        let state = self.dir.path().join("state");
        let out = nsbox_cmd(&[
            "--state-root",
            state.to_str().unwrap(),
            "serve",
            "key",
            "add",
            name,
        ])
        .output()
        .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// Runs a Python program with the SDK pointed at this server; its last stdout line is JSON.
    fn sdk(&self, python: &PathBuf, key: &str, program: &str) -> serde_json::Value {
        let mut cmd = Command::new(python);
        cmd.args(["-c", program]);
        self.run_sdk(cmd, key)
    }

    /// Runs a JavaScript module with the JS SDK (resolved from `dir`'s node_modules) pointed at
    /// this server; its last stdout line is JSON.
    fn sdk_js(&self, dir: &PathBuf, key: &str, program: &str) -> serde_json::Value {
        let mut cmd = Command::new("node");
        cmd.args(["--input-type=module", "-e", program])
            .current_dir(dir);
        self.run_sdk(cmd, key)
    }

    fn run_sdk(&self, mut cmd: Command, key: &str) -> serde_json::Value {
        cmd.env("E2B_API_URL", &self.url);
        let out = in_netns(cmd, self.netns.as_deref())
            .env("E2B_SANDBOX_URL", &self.url)
            .env("E2B_API_KEY", key)
            .env_remove("E2B_DOMAIN")
            .env_remove("E2B_DEBUG")
            // `nsbox ps` from the program sees the test's sessions.
            .env("NSBOX_BIN", nsbox_bin())
            .env("NSBOX_RUN_DIR", test_run_dir())
            .env("NSBOX_CONFIG", test_config())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let last = stdout.lines().last().unwrap_or("");
        serde_json::from_str(last).unwrap_or_else(|e| panic!("{stdout:?}: {e}"))
    }
}

impl Drop for Server {
    /// SIGTERM by pid, and wait: the server removes what it made.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
                rustix::process::Signal::TERM,
            );
            let _ = child.wait();
        }
    }
}

fn session_ids() -> Vec<String> {
    let out = nsbox_cmd(&["ps", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

const SDK_FLOW: &str = r#"
import json, os, subprocess
from e2b import Sandbox, CommandExitException

def ps():
    out = subprocess.run([os.environ["NSBOX_BIN"], "ps", "--json"], capture_output=True, check=True)
    return [r["id"] for r in json.loads(out.stdout)]

out = {}
sbx = Sandbox.create(timeout=120, metadata={"job": "e2b-test"}, envs={"GREETING": "hello"})
out["id"] = sbx.sandbox_id
out["in_ps"] = sbx.sandbox_id in ps()
seen = []
r = sbx.commands.run("echo hi; echo $GREETING; echo oops >&2",
                     on_stdout=lambda s: seen.append(["out", s]),
                     on_stderr=lambda s: seen.append(["err", s]))
out["stdout"], out["stderr"], out["code"] = r.stdout, r.stderr, r.exit_code
out["callbacks"] = "".join(s for k, s in seen if k == "out"), "".join(s for k, s in seen if k == "err")
r = sbx.commands.run("pwd; echo $X", cwd="/tmp", envs={"X": "from-envs"})
out["cwd_envs"] = r.stdout
try:
    sbx.commands.run("echo failing; exit 7")
    out["exit"] = "no exception"
except CommandExitException as e:
    out["exit"] = [e.exit_code, e.stdout]
info = sbx.files.write("notes/a.txt", "some text\n")
out["write_path"] = info.path
out["read"] = sbx.files.read("notes/a.txt")
big = bytes(range(256)) * 12288
sbx.files.write("notes/big.bin", big)
out["big_same"] = sbx.files.read("notes/big.bin", format="bytes") == big
out["cat"] = sbx.commands.run("cat notes/a.txt").stdout
out["list"] = sorted([e.name, e.type.value] for e in sbx.files.list("notes"))
out["exists"] = [sbx.files.exists("notes/a.txt"), sbx.files.exists("notes/none")]
out["mkdir"] = [sbx.files.make_dir("notes/sub"), sbx.files.make_dir("notes/sub")]
watcher = sbx.files.watch_dir("notes")
sbx.commands.run("echo new > notes/made-by-a-command.txt")
out["watched"] = sorted(set((e.name, e.type.name) for e in watcher.get_new_events()))
watcher.stop()
moved = sbx.files.rename("notes/a.txt", "notes/sub/b.txt")
out["moved"] = [moved.path, sbx.files.read("notes/sub/b.txt"), sbx.files.exists("notes/a.txt")]
sbx.files.rename("notes/sub/b.txt", "notes/a.txt")
sbx.files.remove("notes/a.txt")
out["removed"] = not sbx.files.exists("notes/a.txt")
h = sbx.commands.run("echo bg; sleep 0.2; echo done", background=True)
out["bg"] = h.wait().stdout
h = sbx.commands.run("sleep 30", background=True)
out["running"] = [[p.cmd, p.args] for p in sbx.commands.list()]
out["bg_kill"] = [h.kill()]
try:
    h.wait()
    out["killed_wait"] = "exit 0"
except CommandExitException as e:
    out["killed_wait"] = e.exit_code
out["bg_kill"].append(sbx.commands.kill(h.pid))
h = sbx.commands.run("head -c 5; echo", background=True, stdin=True)
sbx.commands.send_stdin(h.pid, "hello")
sbx.commands.close_stdin(h.pid)
out["stdin"] = h.wait().stdout
out["listed"] = [s.sandbox_id for s in Sandbox.list().next_items()]
sbx.set_timeout(60)
second = Sandbox.connect(sbx.sandbox_id)
out["second"] = second.commands.run("echo from-second").stdout
out["info_metadata"] = sbx.get_info().metadata
out["kill"] = sbx.kill()
out["killed_again"] = Sandbox.kill(sbx.sandbox_id)
try:
    sbx.commands.run("true")
    out["after_kill"] = "ran"
except Exception as e:
    out["after_kill"] = type(e).__name__
print(json.dumps(out))
"#;

/// The SDK's everyday calls: create, commands with streamed callbacks, a failing command's
/// exit exception, cwd and envs, background commands (wait, list, kill, stdin), files (text,
/// bytes, a 3 MiB file), list, exists, make_dir, rename, remove, watch_dir seeing a command's
/// change, the list of sandboxes, set_timeout, connect from a second client, kill; the sandbox
/// is an nsbox session while it lives and gone from `nsbox ps` after the kill.
#[test]
fn e2b_python_sdk_drives_a_sandbox() {
    require_root!();
    let Some(python) = sdk_python("e2b_python_sdk_drives_a_sandbox") else {
        return;
    };
    let server = Server::start();
    let key = server.key("e2b");
    let out = server.sdk(&python, &key, SDK_FLOW);
    let id = out["id"].as_str().unwrap().to_string();
    assert_eq!(out["in_ps"], true, "{out}");
    assert_eq!(out["stdout"], "hi\nhello\n");
    assert_eq!(out["stderr"], "oops\n");
    assert_eq!(out["code"], 0);
    assert_eq!(
        out["callbacks"],
        serde_json::json!(["hi\nhello\n", "oops\n"])
    );
    assert_eq!(out["cwd_envs"], "/tmp\nfrom-envs\n");
    assert_eq!(out["exit"], serde_json::json!([7, "failing\n"]));
    assert_eq!(out["write_path"], "/sandbox/notes/a.txt");
    assert_eq!(out["read"], "some text\n");
    assert_eq!(out["big_same"], true);
    assert_eq!(out["cat"], "some text\n");
    assert_eq!(
        out["list"],
        serde_json::json!([["a.txt", "file"], ["big.bin", "file"]])
    );
    assert_eq!(out["exists"], serde_json::json!([true, false]));
    assert_eq!(out["mkdir"], serde_json::json!([true, false]));
    assert_eq!(
        out["moved"],
        serde_json::json!(["/sandbox/notes/sub/b.txt", "some text\n", false])
    );
    assert!(
        out["watched"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(["made-by-a-command.txt", "CREATE"])),
        "{out}"
    );
    assert_eq!(out["removed"], true);
    assert_eq!(out["bg"], "bg\ndone\n");
    assert_eq!(
        out["running"],
        serde_json::json!([["/bin/bash", ["-l", "-c", "sleep 30"]]])
    );
    assert_eq!(out["bg_kill"], serde_json::json!([true, false]));
    assert_eq!(out["killed_wait"], 128 + 9);
    assert_eq!(out["stdin"], "hello\n");
    assert_eq!(out["listed"], serde_json::json!([id]));
    assert_eq!(out["second"], "from-second\n");
    assert_eq!(out["info_metadata"], serde_json::json!({"job": "e2b-test"}));
    assert_eq!(out["kill"], true);
    assert_eq!(out["killed_again"], false, "a second kill finds nothing");
    assert_eq!(out["after_kill"], "SandboxNotRunningException");
    assert!(
        !session_ids().contains(&id),
        "the killed sandbox is gone from `nsbox ps`"
    );
    // Audited under the key, in-sandbox requests under the key that owns the sandbox.
    let log = std::fs::read_to_string(server.dir.path().join("state/serve/audit.log")).unwrap();
    let entries: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (action, status) in [
        ("e2b.sandbox.create", 201),
        ("e2b.command.run", 200),
        ("e2b.file.write", 200),
        ("e2b.sandbox.delete", 204),
    ] {
        assert!(
            entries.iter().any(|e| e["action"] == action
                && e["key"] == "e2b"
                && e["sandbox"] == id.as_str()
                && e["status"] == status),
            "{action} {status} in {log}"
        );
    }
}

const SDK_REFUSALS: &str = r#"
import json, os, urllib.request, urllib.error
from e2b import Sandbox, AuthenticationException

out = {}
try:
    Sandbox.create(api_key="nsbox_not_a_key")
    out["bad_key"] = "accepted"
except AuthenticationException:
    out["bad_key"] = "AuthenticationException"
try:
    Sandbox.create("no-such-template-here")
    out["template"] = "created"
except Exception as e:
    out["template"] = [type(e).__name__, "no-such-template-here" in str(e)]

sbx = Sandbox.create(timeout=60)
base = os.environ["E2B_SANDBOX_URL"]
def envd(path, headers):
    req = urllib.request.Request(base + path, headers=headers)
    try:
        return urllib.request.urlopen(req).status
    except urllib.error.HTTPError as e:
        return e.code
sbx.files.write("/sandbox/secret.txt", "s3cret")
# The sandbox id alone opens nothing: the access token is required.
out["no_token"] = envd("/files?path=/sandbox/secret.txt", {"E2b-Sandbox-Id": sbx.sandbox_id})
out["wrong_token"] = envd("/files?path=/sandbox/secret.txt",
                          {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": "0" * 48})
out["right_token"] = envd("/files?path=/sandbox/secret.txt",
                          {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": sbx._envd_access_token})
# Another key's client does not see the sandbox.
other = Sandbox.list(api_key=os.environ["OTHER_KEY"]).next_items()
out["other_key_sees"] = [s.sandbox_id for s in other]
try:
    Sandbox.connect(sbx.sandbox_id, api_key=os.environ["OTHER_KEY"])
    out["other_key_connect"] = "connected"
except Exception as e:
    out["other_key_connect"] = type(e).__name__
try:
    sbx.files.read("/../../../../etc/shadow")
    out["escape"] = "read"
except Exception as e:
    out["escape"] = type(e).__name__
try:
    sbx.commands.run("id -u", user="nobody")
    out["as_other_user"] = "ran"
except Exception as e:
    out["as_other_user"] = [type(e).__name__, "not served" in str(e)]
out["as_user"] = sbx.commands.run("echo ok", user="user").stdout
try:
    sbx.files.rename("/sandbox/secret.txt", "/../../../../tmp/nsbox-e2b-escaped")
    out["rename_escape"] = os.path.exists("/tmp/nsbox-e2b-escaped")
except Exception as e:
    out["rename_escape"] = type(e).__name__
sbx.kill()
print(json.dumps(out))
"#;

/// Bad input through the SDK: a wrong API key is the SDK's authentication error, an unknown
/// template a create error naming it; in-sandbox requests without the sandbox's access
/// token, or from another key, are refused (attempt and expect denial).
#[test]
fn e2b_sdk_auth_and_bad_input_are_refused() {
    require_root!();
    let Some(python) = sdk_python("e2b_sdk_auth_and_bad_input_are_refused") else {
        return;
    };
    let server = Server::start();
    let key = server.key("e2b");
    let other = server.key("other");
    let program = format!("import os; os.environ['OTHER_KEY'] = {other:?}\n{SDK_REFUSALS}");
    let out = server.sdk(&python, &key, &program);
    assert_eq!(out["bad_key"], "AuthenticationException");
    assert_eq!(
        out["template"],
        serde_json::json!(["SandboxException", true])
    );
    assert_eq!(out["no_token"], 401);
    assert_eq!(out["wrong_token"], 401);
    assert_eq!(out["right_token"], 200);
    assert_eq!(out["other_key_sees"], serde_json::json!([]));
    assert_eq!(
        out["other_key_connect"], "SandboxNotFoundException",
        "{out}"
    );
    assert_eq!(out["as_other_user"][1], true, "{out}");
    assert_eq!(out["as_user"], "ok\n");
    assert_ne!(out["escape"], "read");
    assert_ne!(
        out["rename_escape"], true,
        "a rename leaves the sandbox's root"
    );
    assert!(!std::path::Path::new("/tmp/nsbox-e2b-escaped").exists());
}

const SDK_NETWORK: &str = r#"
import json, os, subprocess
from e2b import Sandbox, ALL_TRAFFIC, InvalidArgumentException, SandboxException

def network(sid):
    out = subprocess.run([os.environ["NSBOX_BIN"], "ps", "--json"], capture_output=True, check=True)
    return [r.get("network") for r in json.loads(out.stdout) if r["id"] == sid]

out = {}
sbx = Sandbox.create(network={"allow_out": ["api.example.com"], "deny_out": [ALL_TRAFFIC]})
out["allow_list"] = network(sbx.sandbox_id)
out["denied_name"] = sbx.commands.run("getent hosts other.example.com || echo refused").stdout
sbx.kill()
sbx = Sandbox.create(allow_internet_access=False)
out["no_internet"] = network(sbx.sandbox_id)
sbx.kill()
try:
    # Everything but one host: an open network, which nsbox's E2B API does not give.
    Sandbox.create(network={"deny_out": ["198.51.100.7"]})
    out["open"] = "created"
except SandboxException as e:
    out["open"] = [type(e).__name__, "allow-lists" in str(e)]
print(json.dumps(out))
"#;

/// E2B's egress options on nsbox's networks: an allow-list (`deny_out=[ALL_TRAFFIC]`) is the
/// filtered network (a name outside it is refused inside the sandbox), no internet access is
/// `none`, and an option that would open the network is refused by the create.
#[test]
fn e2b_sdk_network_options_map_to_nsbox_networks() {
    require_root!();
    let Some(python) = sdk_python("e2b_sdk_network_options_map_to_nsbox_networks") else {
        return;
    };
    let server = Server::start();
    let key = server.key("e2b");
    let out = server.sdk(&python, &key, SDK_NETWORK);
    assert_eq!(out["allow_list"], serde_json::json!(["filtered"]), "{out}");
    assert_eq!(out["denied_name"], "refused\n");
    assert_eq!(out["no_internet"], serde_json::json!(["none"]), "{out}");
    assert_eq!(out["open"][1], true, "{out}");
}

const SDK_TIMEOUT: &str = r#"
import json, os, subprocess, time
from e2b import Sandbox

def ps():
    out = subprocess.run([os.environ["NSBOX_BIN"], "ps", "--json"], capture_output=True, check=True)
    return [r["id"] for r in json.loads(out.stdout)]

out = {}
sbx = Sandbox.create(timeout=1)
sid = sbx.sandbox_id
out["listed_first"] = sid in ps()
# Waits for the server's reaper (it looks every second); bounded, not timed.
for _ in range(600):
    if sid not in ps():
        break
    time.sleep(0.1)
out["gone"] = sid not in ps()
out["sdk_list"] = [s.sandbox_id for s in Sandbox.list().next_items()]
try:
    out["is_running"] = sbx.is_running()
except Exception as e:
    out["is_running"] = type(e).__name__
print(json.dumps(out))
"#;

/// A sandbox's E2B timeout is its time to live: after it, the sandbox is gone from `nsbox ps`
/// and from the SDK's list, and the SDK sees it as not running.
#[test]
fn e2b_sandbox_is_gone_after_its_timeout() {
    require_root!();
    let Some(python) = sdk_python("e2b_sandbox_is_gone_after_its_timeout") else {
        return;
    };
    let server = Server::start();
    let key = server.key("e2b");
    let out = server.sdk(&python, &key, SDK_TIMEOUT);
    assert_eq!(out["listed_first"], true, "{out}");
    assert_eq!(out["gone"], true, "{out}");
    assert_eq!(out["sdk_list"], serde_json::json!([]));
    assert_eq!(out["is_running"], false, "{out}");
}

const SDK_PROTOBUF: &str = r#"
import json, os
from e2b import Sandbox
from e2b.envd.process import process_connect, process_pb
from e2b.envd.filesystem import filesystem_connect, filesystem_pb

out = {}
sbx = Sandbox.create(timeout=60)
sbx.files.write("/sandbox/p/a.txt", "abc")
hdrs = {"E2b-Sandbox-Id": sbx.sandbox_id, "X-Access-Token": sbx._envd_access_token}
base = os.environ["E2B_SANDBOX_URL"]
# The generated clients with connectrpc's default codec: binary protobuf.
pc = process_connect.ProcessClientSync(base, send_compression=None)
stdout, end = b"", None
for r in pc.start(process_pb.StartRequest(process=process_pb.ProcessConfig(
        cmd="/bin/sh", args=["-c", "echo proto; exit 3"])), headers=hdrs):
    ev = r.event.event
    if ev.field == "data" and ev.value.output.field == "stdout":
        stdout += ev.value.output.value
    if ev.field == "end":
        end = [ev.value.exit_code, ev.value.exited]
out["proto_run"] = [stdout.decode(), end]
fc = filesystem_connect.FilesystemClientSync(base, send_compression=None)
st = fc.stat(filesystem_pb.StatRequest(path="/sandbox/p/a.txt"), headers=hdrs)
out["proto_stat"] = [st.entry.name, st.entry.size, st.entry.type.name]
ls = fc.list_dir(filesystem_pb.ListDirRequest(path="/sandbox/p", depth=1), headers=hdrs)
out["proto_list"] = [e.name for e in ls.entries]
try:
    fc.stat(filesystem_pb.StatRequest(path="/sandbox/p/none"), headers=hdrs)
except Exception as e:
    out["proto_missing"] = [type(e).__name__, str(getattr(e, "code", ""))]
sbx.kill()
print(json.dumps(out))
"#;

/// The envd services with the protobuf codec, through the SDK's own generated Connect clients
/// with connectrpc's default (binary) codec: a streamed command with its exit code, Stat,
/// ListDir, and a missing path as Connect's not_found.
#[test]
fn e2b_envd_services_speak_protobuf_too() {
    require_root!();
    let Some(python) = sdk_python("e2b_envd_services_speak_protobuf_too") else {
        return;
    };
    let server = Server::start();
    let key = server.key("e2b");
    let out = server.sdk(&python, &key, SDK_PROTOBUF);
    assert_eq!(
        out["proto_run"],
        serde_json::json!(["proto\n", [3, true]]),
        "{out}"
    );
    assert_eq!(out["proto_stat"], serde_json::json!(["a.txt", 3, "FILE"]));
    assert_eq!(out["proto_list"], serde_json::json!(["a.txt"]));
    assert_eq!(
        out["proto_missing"],
        serde_json::json!(["ConnectError", "Code.NOT_FOUND"])
    );
}

const SDK_UNSERVED: &str = r#"
import json
from e2b import Sandbox
out = {}
sbx = Sandbox.create(timeout=60)
h = sbx.commands.run("sleep 5", background=True)
for name, f in [("other_user", lambda: sbx.commands.run("id", user="nobody")),
                ("pause_filesystem", lambda: sbx.pause(mode="filesystem")),
                ("read_other_user", lambda: sbx.files.read("/etc/hostname", user="nobody")),
                ("metrics", lambda: sbx.get_metrics())]:
    try:
        r = f()
        out[name] = ["ok", str(r)[:60]]
    except Exception as e:
        out[name] = [type(e).__name__, str(e)[:90]]
h.kill()
sbx.kill()
print(json.dumps(out))
"#;

/// What nsbox does not serve fails at once with the SDK's own error and a message saying so
/// (never a hang or a silent success): a filesystem-only pause (nsbox's pause keeps memory),
/// running as a user other than E2B's "user" and "root".
#[test]
fn e2b_unserved_features_fail_with_the_sdks_errors() {
    require_root!();
    let Some(python) = sdk_python("e2b_unserved_features_fail_with_the_sdks_errors") else {
        return;
    };
    let server = Server::start();
    let key = server.key("e2b");
    let out = server.sdk(&python, &key, SDK_UNSERVED);
    for name in ["other_user", "pause_filesystem", "read_other_user"] {
        assert_eq!(out[name][0], "SandboxException", "{name}: {out}");
        let message = out[name][1].as_str().unwrap();
        assert!(
            message.contains("not served") || message.contains("does not"),
            "{name}: {message}"
        );
    }
    assert_eq!(out["metrics"], serde_json::json!(["ok", "[]"]));
}

const SDK_PAUSE: &str = r#"
import json, os, subprocess
from e2b import Sandbox, SandboxQuery, SandboxState

def ps():
    out = subprocess.run([os.environ["NSBOX_BIN"], "ps", "--json"], capture_output=True, check=True)
    return {r["id"]: r["state"] for r in json.loads(out.stdout)}

def states(*wanted):
    q = SandboxQuery(state=list(wanted))
    return [s.sandbox_id for s in Sandbox.list(query=q).next_items()]

out = {}
sbx = Sandbox.create(timeout=120)
sid = sbx.sandbox_id
# A process that counts on: its count carries on after the resume (memory kept).
sbx.commands.run("i=0; while :; do i=$((i+1)); echo $i > /sandbox/count; sleep 0.05; done", background=True)
sbx.commands.run("mkdir -p t/a/b && echo x > t/a/b/deep.txt && echo y > t/top.txt")
out["depth1"] = sorted(e.path for e in sbx.files.list("t"))
out["depth3"] = sorted(e.path for e in sbx.files.list("t", depth=3))
w = sbx.files.watch_dir("t", recursive=True)
sbx.commands.run("echo z > t/a/b/new.txt && mkdir t/a/c")
first = sorted(set(e.name for e in w.get_new_events() if e.type.name == "CREATE"))
# t/a/c is watched from the poll that reported it on.
sbx.commands.run("echo w > t/a/c/in-new.txt")
second = sorted(set(e.name for e in w.get_new_events() if e.type.name == "CREATE"))
w.stop()
out["rwatch"] = [first, second]
out["pause"] = [sbx.pause(), sbx.pause()]
out["ps_state"] = ps().get(sid)
out["info_state"] = sbx.get_info().state.value
out["listed"] = [sid in states(SandboxState.PAUSED), sid in states(SandboxState.RUNNING)]
out["is_running"] = sbx.is_running()
try:
    sbx.commands.run("true")
    out["run_paused"] = "ran"
except Exception as e:
    out["run_paused"] = type(e).__name__
again = Sandbox.connect(sid)
out["after"] = [ps().get(sid), again.get_info().state.value, again.is_running()]
before = int(again.files.read("/sandbox/count"))
again.commands.run("sleep 0.3")
out["counting"] = int(again.files.read("/sandbox/count")) > before
again.kill()
print(json.dumps(out))
"#;

/// E2B's pause is nsbox's freezer: `pause()` freezes the sandbox (a second pause answers
/// False), `nsbox ps` and the SDK show it paused, in-sandbox calls see it not running, and
/// `Sandbox.connect` resumes it with its processes carrying on. `files.list(depth=3)` lists
/// the tree under a directory with full paths; a recursive `watch_dir` sees changes in
/// subdirectories, also in one made after the watch began.
#[test]
fn e2b_sdk_pause_resume_and_recursive_files() {
    require_root!();
    let Some(python) = sdk_python("e2b_sdk_pause_resume_and_recursive_files") else {
        return;
    };
    let server = Server::start();
    let key = server.key("e2b");
    let out = server.sdk(&python, &key, SDK_PAUSE);
    assert_eq!(
        out["depth1"],
        serde_json::json!(["/sandbox/t/a", "/sandbox/t/top.txt"]),
        "{out}"
    );
    assert_eq!(
        out["depth3"],
        serde_json::json!([
            "/sandbox/t/a",
            "/sandbox/t/a/b",
            "/sandbox/t/a/b/deep.txt",
            "/sandbox/t/top.txt"
        ]),
        "{out}"
    );
    assert_eq!(
        out["rwatch"],
        serde_json::json!([["a/b/new.txt", "a/c"], ["a/c/in-new.txt"]]),
        "{out}"
    );
    assert_eq!(out["pause"], serde_json::json!([true, false]), "{out}");
    assert_eq!(out["ps_state"], "paused", "{out}");
    assert_eq!(out["info_state"], "paused", "{out}");
    assert_eq!(out["listed"], serde_json::json!([true, false]), "{out}");
    assert_eq!(out["is_running"], false, "{out}");
    assert_ne!(out["run_paused"], "ran", "{out}");
    assert_eq!(
        out["after"],
        serde_json::json!(["running", "running", true]),
        "{out}"
    );
    assert_eq!(out["counting"], true, "{out}");
}

const JS_FLOW: &str = r#"
import { Sandbox } from 'e2b'
const out = {}
const sbx = await Sandbox.create({ timeoutMs: 60000, metadata: { job: 'js' }, envs: { GREETING: 'hello' } })
let seen = ''
const r = await sbx.commands.run('echo hi; echo $GREETING', { onStdout: (d) => { seen += d } })
out.run = [r.stdout, r.exitCode, seen]
try { await sbx.commands.run('echo no >&2; exit 5'); out.exit = 'none' } catch (e) { out.exit = [e.constructor.name, e.exitCode, e.stderr] }
await sbx.files.write('js/a.txt', 'from js\n')
out.read = await sbx.files.read('js/a.txt')
out.list = (await sbx.files.list('js')).map((e) => e.name)
const h = await sbx.commands.run('sleep 30', { background: true })
out.kill = await h.kill()
out.listed = (await Sandbox.list().nextItems()).map((s) => s.sandboxId).includes(sbx.sandboxId)
out.metadata = (await sbx.getInfo()).metadata
out.pause = await sbx.pause()
const again = await Sandbox.connect(sbx.sandboxId)
out.resumed = (await again.commands.run('echo resumed')).stdout
out.killed = await sbx.kill()
try { await sbx.commands.run('true'); out.after_kill = 'ran' } catch (e) { out.after_kill = e.constructor.name }
console.log(JSON.stringify(out))
"#;

/// The JS SDK (`e2b` from npm) drives the same server: streamed output, a failing command's
/// `CommandExitError`, files, a background command's kill, list, metadata, pause and
/// connect-resumes, kill, and a killed sandbox's error.
#[test]
fn e2b_js_sdk_drives_a_sandbox() {
    require_root!();
    let Some(dir) = sdk_js("e2b_js_sdk_drives_a_sandbox") else {
        return;
    };
    let server = Server::start();
    let key = server.key("e2b-js");
    let out = server.sdk_js(&dir, &key, JS_FLOW);
    assert_eq!(
        out["run"],
        serde_json::json!(["hi\nhello\n", 0, "hi\nhello\n"]),
        "{out}"
    );
    assert_eq!(
        out["exit"],
        serde_json::json!(["CommandExitError", 5, "no\n"]),
        "{out}"
    );
    assert_eq!(out["read"], "from js\n", "{out}");
    assert_eq!(out["list"], serde_json::json!(["a.txt"]), "{out}");
    assert_eq!(out["kill"], true, "{out}");
    assert_eq!(out["listed"], true, "{out}");
    assert_eq!(out["metadata"], serde_json::json!({"job": "js"}), "{out}");
    assert_eq!(out["pause"], true, "{out}");
    assert_eq!(out["resumed"], "resumed\n", "{out}");
    assert_eq!(out["killed"], true, "{out}");
    assert_eq!(out["after_kill"], "SandboxNotFoundError", "{out}");
}

const SDK_WORLD: &str = r#"
import json
from e2b import Sandbox, ALL_TRAFFIC, CommandExitException

out = {}
sbx = Sandbox.create(timeout=120, network={"allow_out": ["web.allowed.example", "203.0.113.40"], "deny_out": [ALL_TRAFFIC]})
run = lambda c, **k: sbx.commands.run(c, timeout=60, **k)
out["allowed"] = run("curl -sS -m 10 http://web.allowed.example/").stdout
out["other_name"] = run("curl -sS -m 10 http://other.example/ >/dev/null 2>&1 && echo reached || echo refused").stdout
out["other_addr"] = run("curl -sS -m 10 http://203.0.113.20/ >/dev/null 2>&1 && echo reached || echo refused").stdout

# The pipeline (plain TCP goes by address on nsbox's filtered network, names are for
# HTTP(S)): clone from the git server in the fake internet, branch, edit, a failing then
# a passing test step, commit -F, push; output streamed.
git = "git -c user.name=Agent -c user.email=agent@example.invalid"
streamed = []
# The git daemon may still be starting: a bounded retry, not a timing.
run("for i in $(seq 1 100); do git clone -q git://203.0.113.40/app.git app && exit 0; rm -rf app; sleep 0.1; done; exit 1")
run("git checkout -q -b fix", cwd="/sandbox/app")
try:
    run("sh test.sh", cwd="/sandbox/app", on_stdout=lambda s: streamed.append(s))
    out["first_test"] = "passed"
except CommandExitException as e:
    out["first_test"] = [e.exit_code, e.stdout]
sbx.files.write("/sandbox/app/value.txt", "42\n")
r = run("sh test.sh", cwd="/sandbox/app", on_stdout=lambda s: streamed.append(s))
out["second_test"] = [r.exit_code, r.stdout]
sbx.files.write("/sandbox/msg.txt", "Fix the value\n\nThe test wants 42.\n")
run(git + " commit -q -a -F /sandbox/msg.txt && " + git + " push -q origin fix", cwd="/sandbox/app")
out["streamed"] = "".join(streamed)
sbx.kill()

sbx = Sandbox.create(allow_internet_access=False)
out["no_internet"] = sbx.commands.run("curl -sS -m 10 http://203.0.113.10/ >/dev/null 2>&1 && echo reached || echo refused").stdout
sbx.kill()
print(json.dumps(out))
"#;

/// Two scenarios through the SDK inside the fake internet of namespaces (networld.rs):
/// egress — an allow-list reaches the allowed name and nothing else (another name, a bare
/// address), no internet access reaches nothing; and a git pipeline — clone from a git server
/// in the fake internet, branch, a failing then passing test step with streamed output, an
/// edit through `files.write`, `git commit -F`, push; the server's repository has the commit.
#[test]
fn e2b_sdk_egress_and_git_pipeline_in_the_fake_internet() {
    require_root!();
    let Some(python) = sdk_python("e2b_sdk_egress_and_git_pipeline_in_the_fake_internet") else {
        return;
    };
    let mut w = crate::networld::World::start();
    // A bare repository with one commit, served by git daemon (push allowed) on TCP4.
    let repos = w.dir.path().join("git");
    let seed = w.dir.path().join("seed");
    let sh = |script: &str| {
        let out = Command::new("sh").args(["-c", script]).output().unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let git = "git -c user.name=Test -c user.email=test@example.invalid -c init.defaultBranch=main";
    sh(&format!(
        "set -e; {git} init -q --bare {r}/app.git; {git} init -q {s}; cd {s}; \
         printf '0\\n' > value.txt; \
         printf 'v=$(cat value.txt); echo value $v; [ \"$v\" = 42 ] || {{ echo want 42; exit 1; }}\\n' > test.sh; \
         {git} add .; {git} commit -q -m start; {git} push -q {r}/app.git HEAD:main",
        r = repos.display(),
        s = seed.display()
    ));
    let inet = w.inet_ns.clone();
    let daemon = format!(
        "echo ready; exec git daemon --reuseaddr --export-all --enable=receive-pack --listen={} --base-path={} {}",
        crate::networld::TCP4,
        repos.display(),
        repos.display()
    );
    w.spawn_server(&inet, &["sh", "-c", &daemon]);
    let config = w.dir.path().join("nsbox.toml");
    std::fs::write(
        &config,
        format!(
            "[pull]\npolicy = \"never\"\n[defaults.network]\ndns_upstream = [\"{}\"]\n",
            crate::networld::DNS
        ),
    )
    .unwrap();
    let host = w.host_ns.clone();
    let server = Server::start_in(Some(&host), &["--config", config.to_str().unwrap()]);
    let key = server.key("e2b");
    let out = server.sdk(&python, &key, SDK_WORLD);
    assert_eq!(out["allowed"], "hello from the fake internet\n", "{out}");
    assert_eq!(out["other_name"], "refused\n", "{out}");
    assert_eq!(out["other_addr"], "refused\n", "{out}");
    assert_eq!(out["no_internet"], "refused\n", "{out}");
    assert_eq!(
        out["first_test"],
        serde_json::json!([1, "value 0\nwant 42\n"]),
        "{out}"
    );
    assert_eq!(
        out["second_test"],
        serde_json::json!([0, "value 42\n"]),
        "{out}"
    );
    assert_eq!(out["streamed"], "value 0\nwant 42\nvalue 42\n", "{out}");
    let log = sh(&format!(
        "git --git-dir={}/app.git log --format='%s|%b|%an' fix",
        repos.display()
    ));
    assert!(
        log.starts_with("Fix the value|The test wants 42.\n|Agent"),
        "{log}"
    );
}

const SDK_PTY: &str = r#"
import json
from e2b import Sandbox, PtySize, CommandExitException
out = {}
sbx = Sandbox.create(timeout=60, envs={"TOKEN": "x"})
def run(h):
    data = []
    try:
        h.wait(on_pty=lambda d: data.append(d))
        code = 0
    except CommandExitException as e:
        code = e.exit_code
    return [code, b"".join(data).decode(errors="replace")]
h = sbx.pty.create(PtySize(rows=24, cols=80))
sbx.pty.send_stdin(h.pid, b"stty size; tty; exit 3\n")
out["first"] = run(h)
# The resize is applied before input sent after it is written (one ordered channel).
h = sbx.pty.create(PtySize(rows=24, cols=80))
sbx.pty.resize(h.pid, PtySize(rows=30, cols=100))
sbx.pty.send_stdin(h.pid, b"stty size; exit\n")
out["resized"] = run(h)
h = sbx.pty.create(PtySize(rows=24, cols=80))
out["killed"] = sbx.pty.kill(h.pid)
out["after_kill"] = run(h)[0]
out["kill_gone"] = sbx.pty.kill(h.pid)
sbx.kill()
print(json.dumps(out))
"#;

/// `pty.create` runs a shell on a terminal of the asked size (the supervisor's pty, read and
/// written from outside): input reaches it, `pty.resize` changes its size, its exit code
/// ends the handle, and `pty.kill` ends it (a second kill finds nothing to kill).
#[test]
fn e2b_sdk_pty_create_input_resize() {
    require_root!();
    let Some(python) = sdk_python("e2b_sdk_pty_create_input_resize") else {
        return;
    };
    let server = Server::start();
    let key = server.key("e2b");
    let out = server.sdk(&python, &key, SDK_PTY);
    assert_eq!(out["first"][0], 3, "{out}");
    let first = out["first"][1].as_str().unwrap();
    assert!(first.contains("24 80\r\n"), "{first:?}");
    assert!(first.contains("/dev/pts/"), "{first:?}");
    assert_eq!(out["resized"][0], 0, "{out}");
    let resized = out["resized"][1].as_str().unwrap();
    assert!(resized.contains("30 100\r\n"), "{resized:?}");
    assert_eq!(out["killed"], true, "{out}");
    assert_ne!(out["after_kill"], 0, "{out}");
    assert_eq!(out["kill_gone"], false, "{out}");
}

const SDK_SNAPSHOT: &str = r#"
import json
from e2b import Sandbox, SandboxException
out = {}
sbx = Sandbox.create(template="e2bbase:1", timeout=60)
sbx.files.write("/sandbox/state.txt", "before the snapshot\n")
snap = sbx.create_snapshot()
out["names"] = snap.names == [snap.snapshot_id]
sbx.kill()
copy = Sandbox.create(template=snap.snapshot_id, timeout=60)
out["copied"] = copy.files.read("/sandbox/state.txt")
out["template"] = copy.get_info().template_id == snap.snapshot_id
copy.kill()
host = Sandbox.create(timeout=60)
try:
    host.create_snapshot()
    out["host_root"] = "snapshotted"
except SandboxException as e:
    out["host_root"] = [type(e).__name__, "image" in str(e)]
host.kill()
print(json.dumps(out))
"#;

/// `create_snapshot` is `nsbox commit`: the sandbox's files become an image whose name is a
/// template, and a sandbox created from it has them; a sandbox on the host's root (no image
/// to stack on) is refused with the SDK's error and a message.
#[test]
fn e2b_sdk_snapshot_is_an_image_template() {
    use crate::oci_build::{base_layer, Comp, Layout};
    require_root!();
    let Some(python) = sdk_python("e2b_sdk_snapshot_is_an_image_template") else {
        return;
    };
    let server = Server::start();
    let layout_dir = server.dir.path().join("layout");
    let mut layout = Layout::new(&layout_dir);
    layout.image(
        Some("1"),
        &[(base_layer(), Comp::Gzip)],
        serde_json::json!({"Env": ["PATH=/bin"]}),
    );
    let state = server.dir.path().join("state");
    let out = nsbox_cmd(&[
        "--state-root",
        state.to_str().unwrap(),
        "load",
        layout_dir.to_str().unwrap(),
        "--tag",
        "e2bbase:1",
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let key = server.key("e2b");
    let out = server.sdk(&python, &key, SDK_SNAPSHOT);
    assert_eq!(out["names"], true, "{out}");
    assert_eq!(out["copied"], "before the snapshot\n", "{out}");
    assert_eq!(out["template"], true, "{out}");
    assert_eq!(
        out["host_root"],
        serde_json::json!(["SandboxException", true]),
        "{out}"
    );
}

const SDK_ROOT_AND_CONNECT: &str = r#"
import json, os, subprocess, time
from e2b import Sandbox, PtySize, CommandExitException

def ps():
    out = subprocess.run([os.environ["NSBOX_BIN"], "ps", "--json"], capture_output=True, check=True)
    return {r["id"]: r["state"] for r in json.loads(out.stdout)}

out = {}
sbx = Sandbox.create(timeout=60)
probe = "id -u; id -g; echo $HOME; grep -E '^Cap(Prm|Eff|Bnd)' /proc/self/status | tr -d '\\t'"
out["as_root"] = sbx.commands.run(probe, user="root").stdout.split()
out["as_user"] = sbx.commands.run(probe).stdout.split()
# Root without capabilities: it cannot become another user or mount.
r = sbx.commands.run("python3 -c 'import os; os.setuid(100)' 2>&1; echo rc=$?; mount -t tmpfs t /mnt 2>&1; echo rc=$?; "
                     "cat /proc/1/environ >/dev/null; echo rc=$?; ls /proc/1/root/ >/dev/null; echo rc=$?; kill -TERM 1; sleep 0.2; echo alive", user="root")
out["root_attacks"] = r.stdout
sbx.files.write("/tmp/by-root.txt", "r", user="root")
sbx.files.write("/tmp/by-user.txt", "u")
sbx.files.make_dir("/tmp/root-dir", user="root")
out["owners"] = sbx.commands.run("stat -c %u /tmp/by-root.txt /tmp/by-user.txt /tmp/root-dir").stdout.split()
# The user cannot change what root wrote.
r = sbx.commands.run("echo x >> /tmp/by-root.txt 2>&1; echo rc=$?")
out["user_vs_root_file"] = r.stdout.strip().splitlines()[-1]
# A pty as root.
term = []
pty = sbx.pty.create(PtySize(rows=24, cols=80), user="root")
sbx.pty.send_stdin(pty.pid, b"id -u; ls -l $(tty) | cut -d' ' -f3; exit\n")
pty.wait(on_pty=lambda d: term.append(d))
# `id -u` and the terminal's owner, each on its own line after the echoed input.
out["pty_root"] = "\r0\r\nroot\r\n" in b"".join(term).decode(errors="replace")

# commands.connect: the Start stream closes, the command goes on, a second client reattaches
# and sees its later output and its exit.
h = sbx.commands.run("for i in 1 2 3 4 5 6 7 8; do echo line$i; sleep 0.25; done; exit 3", background=True)
time.sleep(0.4)
h.disconnect()
out["listed_after_disconnect"] = h.pid in [p.pid for p in sbx.commands.list()]
other = Sandbox.connect(sbx.sandbox_id)
c = other.commands.connect(h.pid)
try:
    c.wait()
    out["connected"] = "exit 0"
except CommandExitException as e:
    out["connected"] = [e.exit_code, e.stdout]
# Two watchers at once see the same output.
h = sbx.commands.run("sleep 0.5; echo both; exit 4", background=True)
c = other.commands.connect(h.pid)
results = []
for handle in (h, c):
    try:
        handle.wait()
    except CommandExitException as e:
        results.append([e.exit_code, e.stdout])
out["two_watchers"] = results
try:
    other.commands.connect(h.pid)
    out["connect_ended"] = "connected"
except Exception as e:
    out["connect_ended"] = type(e).__name__
sbx.kill()

# Auto-pause: the timeout freezes the sandbox instead of killing it; connect resumes it
# with its processes carrying on and a new timeout.
a = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause"})
aid = a.sandbox_id
a.commands.run("i=0; while :; do i=$((i+1)); echo $i > /sandbox/count; sleep 0.05; done", background=True)
info = a.get_info()
out["lifecycle"] = [info.lifecycle["on_timeout"], info.lifecycle["auto_resume"]] if info.lifecycle else None
time.sleep(4.5)
out["auto_paused"] = [ps().get(aid), a.get_info().state.value]
try:
    a.commands.run("true")
    out["run_while_paused"] = "ran"
except Exception as e:
    out["run_while_paused"] = type(e).__name__
b = Sandbox.connect(aid, timeout=30)
before = int(b.files.read("/sandbox/count"))
b.commands.run("sleep 0.3")
out["resumed"] = [ps().get(aid), b.get_info().state.value, int(b.files.read("/sandbox/count")) > before]
b.kill()

# Auto-resume: the next in-sandbox request thaws a sandbox its timeout paused.
c = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause", "auto_resume": True})
time.sleep(4.5)
out["auto_resume"] = [ps().get(c.sandbox_id), c.commands.run("echo awake").stdout, ps().get(c.sandbox_id)]
c.kill()
print(json.dumps(out))
"#;

/// E2B's `user="root"` (commands, ptys and files as uid 0 of the sandbox, without
/// capabilities; the default user cannot change root's files), `commands.connect` (a
/// command outlives its Start stream, a second client reattaches, two watchers see the same
/// output, an ended command is not found), and the lifecycle: `on_timeout="pause"` freezes
/// the sandbox when its timeout is over, connect resumes it with its processes, and
/// `auto_resume` lets the next request thaw it.
#[test]
fn e2b_sdk_root_user_connect_and_auto_pause() {
    require_root!();
    let Some(python) = sdk_python("e2b_sdk_root_user_connect_and_auto_pause") else {
        return;
    };
    let server = Server::start();
    let key = server.key("e2b");
    let out = server.sdk(&python, &key, SDK_ROOT_AND_CONNECT);
    assert_eq!(
        out["as_root"],
        serde_json::json!([
            "0",
            "0",
            "/root",
            "CapPrm:0000000000000000",
            "CapEff:0000000000000000",
            "CapBnd:0000000000000000"
        ]),
        "{out}"
    );
    assert_eq!(out["as_user"][0], "100", "{out}");
    assert_eq!(out["as_user"][3], "CapPrm:0000000000000000", "{out}");
    let attacks = out["root_attacks"].as_str().unwrap();
    assert!(attacks.contains("PermissionError"), "{attacks}");
    assert!(!attacks.contains("rc=0"), "{attacks}");
    assert_eq!(attacks.matches("rc=").count(), 4, "{attacks}");
    assert!(attacks.ends_with("alive\n"), "{attacks}");
    assert_eq!(out["owners"], serde_json::json!(["0", "100", "0"]), "{out}");
    assert_eq!(out["user_vs_root_file"], "rc=1", "{out}");
    assert_eq!(out["pty_root"], true, "{out}");
    assert_eq!(out["listed_after_disconnect"], true, "{out}");
    assert_eq!(out["connected"][0], 3, "{out}");
    let seen = out["connected"][1].as_str().unwrap();
    assert!(seen.contains("line8"), "{out}");
    assert!(
        !seen.contains("line1\n"),
        "only what came after the connect: {out}"
    );
    assert_eq!(
        out["two_watchers"],
        serde_json::json!([[4, "both\n"], [4, "both\n"]]),
        "{out}"
    );
    assert_eq!(out["connect_ended"], "NotFoundException", "{out}");
    assert_eq!(
        out["lifecycle"],
        serde_json::json!(["pause", false]),
        "{out}"
    );
    assert_eq!(
        out["auto_paused"],
        serde_json::json!(["paused", "paused"]),
        "{out}"
    );
    assert_ne!(out["run_while_paused"], "ran", "{out}");
    assert_eq!(
        out["resumed"],
        serde_json::json!(["running", "running", true]),
        "{out}"
    );
    assert_eq!(
        out["auto_resume"],
        serde_json::json!(["paused", "awake\n", "running"]),
        "{out}"
    );
}
