//! A sandbox through its whole lifecycle with the library's [`Handle`], no session supervisor
//! in between: create it (built, its init waiting), run two commands in it one after the other
//! (the second sees what the first left), kill it, reap it, tear it down. Prints one line per
//! step for `tests/integration/lifecycle.rs`; the path a warm pool or an OCI `create`/`start`
//! pair takes. Needs root.
//!
//!     cargo build --example lifecycle && sudo target/*/debug/examples/lifecycle
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use nsbox::sandbox::control::{ExecRequest, ToSupervisor};
use nsbox::sandbox::event_loop::PollSet;
use nsbox::sandbox::handle::{Handle, HandleEvent};

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let profile = nsbox::profile::Profile::load("default")?;
    let request = nsbox::spec::ExecRequest {
        command: vec!["/bin/true".into()],
        ..Default::default()
    };
    let spec = nsbox::spec::SandboxSpec::build(request, &profile, &BTreeMap::new())?;

    let t0 = Instant::now();
    let mut handle = Handle::create(&spec)?.handle;
    println!("state {}", handle.state().name());
    eprintln!("created in {:?}", t0.elapsed());

    let t1 = Instant::now();
    let first = run(
        &mut handle,
        1,
        "echo left-by-the-first > /tmp/note; echo one",
    )?;
    eprintln!("first command in {:?}", t1.elapsed());
    println!("first {}", first.trim());
    println!("state {}", handle.state().name());
    let second = run(&mut handle, 2, "cat /tmp/note")?;
    println!("second {}", second.trim());

    handle.kill();
    println!("state {}", handle.state().name());
    while !handle.try_reap()? {
        let mut set = PollSet::new();
        handle.register(&mut set, |source| source);
        set.wait(None)?;
    }
    println!("state {}", handle.state().name());
    if let Some(warning) = handle.teardown() {
        println!("warning {warning}");
    }
    println!("state {}", handle.state().name());
    println!("id {}", handle.id());
    Ok(())
}

/// Runs `/bin/sh -c script` in the sandbox as command `exec_id`; returns its stdout once it
/// ended with status 0.
fn run(handle: &mut Handle, exec_id: u64, script: &str) -> Result<String, Failure> {
    let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
    let (out_r, out_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let devnull: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let attached: [BorrowedFd<'_>; 4] = [
        devnull.as_fd(),
        out_w.as_fd(),
        out_w.as_fd(),
        status_w.as_fd(),
    ];
    let request = ExecRequest {
        exec_id,
        argv: ["/bin/sh", "-c", script]
            .iter()
            .map(|a| a.as_bytes().to_vec())
            .collect(),
        env: vec![("PATH".into(), "/usr/bin:/bin".into())],
        workdir: "/".into(),
        tty: false,
        winsize: None,
        gated: false,
        failure_on_terminal: false,
        user: None,
    };
    handle.exec(request, &attached)?;
    drop((devnull, out_w, status_w));
    loop {
        let mut set = PollSet::new();
        handle.register(&mut set, |source| source);
        for (source, _) in set.wait(None)? {
            for event in handle.on_ready(source)? {
                match event {
                    HandleEvent::Message(ToSupervisor::ExecEnded { code, .. }, _) => {
                        if code != Some(0) {
                            return Err(format!("command {exec_id} ended with {code:?}").into());
                        }
                        let mut status = String::new();
                        std::fs::File::from(status_r).read_to_string(&mut status)?;
                        if !status.is_empty() {
                            return Err(status.into());
                        }
                        let mut out = String::new();
                        std::fs::File::from(out_r).read_to_string(&mut out)?;
                        return Ok(out);
                    }
                    HandleEvent::Message(ToSupervisor::ExecRefused { message, .. }, _) => {
                        return Err(message.into())
                    }
                    HandleEvent::InitEnded | HandleEvent::ControlClosed => {
                        return Err("the sandbox ended".into())
                    }
                    _ => {}
                }
            }
        }
    }
}
