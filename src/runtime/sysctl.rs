//! `linux.sysctl` of a container: `net.*` keys, written in the sandbox's own network namespace
//! before its process starts. The writer is a child of `create` that joins the sandbox's
//! network namespace and then its user namespace, so the kernel reads values that name ids
//! (`net.ipv4.ping_group_range` is a gid range) in the sandbox's user namespace, as a runtime
//! writing from inside the container would: podman's `"0 0"` means the container's gid 0, not
//! the host's. The network namespace is owned by that user namespace, which is what lets the
//! writer, holding capabilities only there after the join, write its sysctls.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::RuntimeError;
use crate::sys;
use crate::sys::process::flags;

/// Writes each (path under /proc/sys, value) in the network namespace of the sandbox whose
/// init is `init_pid`, from its user namespace. Fails naming the first key that could not be
/// written and why.
#[allow(unsafe_code)] // the fork; the block says why it is sound
pub fn write_in(init_pid: i32, sysctls: &[(String, String)]) -> Result<(), RuntimeError> {
    if sysctls.is_empty() {
        return Ok(());
    }
    let open = |kind: &str| {
        sys::process::open_namespace(Path::new(&format!("/proc/{init_pid}/ns/{kind}"))).map_err(
            RuntimeError::io(format!("open the sandbox's {kind} namespace")),
        )
    };
    let net = open("net")?;
    let user = open("user")?;
    let (reader, writer) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| RuntimeError::io("make a pipe")(e.into()))?;
    let (mut reader, writer) = (std::fs::File::from(reader), std::fs::File::from(writer));
    // SAFETY: the runtime is single-threaded (the session's supervisor was forked, no thread
    // was started here), and the child ends through `exit_now`, never returning.
    let pid =
        unsafe { sys::process::fork() }.map_err(RuntimeError::io("fork the sysctl writer"))?;
    if pid == 0 {
        let _abort = sys::process::AbortOnPanic;
        drop(reader);
        let code = match write_joined(&net, &user, sysctls) {
            Ok(()) => 0,
            Err(why) => {
                let mut writer = writer;
                let _ = writer.write_all(why.as_bytes());
                1
            }
        };
        sys::process::exit_now(code);
    }
    drop(writer);
    let mut why = String::new();
    let _ = reader.read_to_string(&mut why);
    let mut status = 0;
    // SAFETY: waits for the child forked above; `status` is a valid out pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    if waited == pid && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        return Ok(());
    }
    if why.is_empty() {
        why = format!("the sysctl writer ended abnormally (wait status {status})");
    }
    Err(RuntimeError::Sysctl(why))
}

/// In the forked writer: joins the namespaces and writes every key; the error names the key.
fn write_joined(net: &OwnedFd, user: &OwnedFd, sysctls: &[(String, String)]) -> Result<(), String> {
    // Nothing of the sandbox may ptrace or read the writer once it is in its user namespace.
    sys::process::set_non_dumpable().map_err(|e| format!("make the writer non-dumpable: {e}"))?;
    // The network namespace first, while still holding the host's capabilities (joining the
    // user namespace first would leave none over the host's one to leave it).
    sys::process::setns(net.as_fd(), flags::NEWNET)
        .map_err(|e| format!("join the sandbox's network namespace: {e}"))?;
    sys::process::setns(user.as_fd(), flags::NEWUSER)
        .map_err(|e| format!("join the sandbox's user namespace: {e}"))?;
    for (path, value) in sysctls {
        let key = path.replace('/', ".");
        // /proc/sys/net shows the network namespace of the process that opens it: ours now.
        let file = format!("/proc/sys/{path}");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .map_err(|e| format!("linux.sysctl.{key}: cannot open {file}: {e} — hint: check the name (a sysctl of this kernel's network namespaces)"))?;
        f.write_all(value.as_bytes())
            .map_err(|e| format!("linux.sysctl.{key}: cannot write {value:?}: {e} — hint: check the value's format and range"))?;
    }
    Ok(())
}
