//! One sandbox's cgroup directories: plan what to create from the layout and the limits (pure),
//! then create, fill and open them; read counters; remove.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{Mode, OFlags};

use super::fsops::{
    keyed_number, parse_number, populate_fixture, read_optional, read_required, remove_cgroup_dir,
    write_control, Written,
};
use super::layout::{CgroupLayout, CgroupVersion, Hierarchy, Placement};
use super::{validate_id, CgroupError, CgroupLimits, CgroupStats, Controller, DIR_PREFIX};

/// CFS period nsbox uses for the cpu limit (the kernel default, 100 ms).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;
/// How long `remove` waits for exiting tasks to leave before giving up.
const REMOVE_PATIENCE: Duration = Duration::from_secs(1);
/// Drop runs on error paths; it must not stall them for long.
const DROP_PATIENCE: Duration = Duration::from_millis(250);
/// How long freezing or thawing may take before it is reported as failed.
const FREEZE_PATIENCE: Duration = Duration::from_secs(5);
/// On cgroup v2, the leaf of `nsbox-<id>` the sandbox's processes live in (see
/// [`SandboxCgroup::charge_supervisor`]): its memory and pids limits, freezer and counters.
pub const WORKLOAD_LEAF: &str = "sandbox";
/// On cgroup v2, the leaf of `nsbox-<id>` its supervisor moves into to be charged: under the
/// sandbox's cpu limit (on `nsbox-<id>`), outside its memory and pids limits and its freezer.
pub const SUPERVISOR_LEAF: &str = "supervisor";

/// The cgroup(s) of one sandbox: `nsbox-<id>` in each hierarchy used. Removed by
/// [`SandboxCgroup::remove`], or best-effort on drop.
#[derive(Debug)]
pub struct SandboxCgroup {
    id: String,
    /// With a [`CgroupAt`] path: the registry of the parents nsbox made for such paths, which
    /// the last sandbox to leave one removes (see [`ParentRegistry`]).
    registry: Option<PathBuf>,
    /// Made at a [`CgroupAt`] path an engine named: once created, the directories are the
    /// engine's container's and outlive the sandbox until the engine deletes the container
    /// ([`remove_named`]), as runc's do: its shim reads them (an OOM's `memory.events`) after
    /// the processes are gone. `remove` and drop then only close the fds.
    engine_owned: bool,
    /// Created directories, in creation order; only these are ever removed.
    dirs: Vec<CgroupDir>,
    /// The v2 directory (`nsbox-<id>`): flocked while the supervisor lives (`hold_in_use`).
    v2_fd: Option<OwnedFd>,
    /// Its workload leaf, where there is one ([`WORKLOAD_LEAF`]), for
    /// `clone3(CLONE_INTO_CGROUP)`; else the sandbox is cloned into `v2_fd`.
    v2_leaf_fd: Option<OwnedFd>,
    /// One v1 `tasks` file per v1 directory, for [`join_self`].
    tasks_fds: Vec<OwnedFd>,
    warnings: Vec<String>,
    /// While the supervisor is charged to this sandbox (see
    /// [`SandboxCgroup::charge_supervisor`]): the `cgroup.procs` of its own cpu cgroup, to go
    /// back to before the directories are removed.
    charged: Option<OwnedFd>,
}

#[derive(Debug, Clone)]
struct CgroupDir {
    path: PathBuf,
    version: CgroupVersion,
    controllers: Vec<Controller>,
    /// The v1 freezer directory (made only to pause the sandbox; no limits in it).
    freezer: bool,
    /// v2 with the cpu controller: the workload's leaf ([`WORKLOAD_LEAF`]) below `path`, which
    /// holds the memory and pids limits, while the cpu limit is on `path` itself.
    leaf: Option<PathBuf>,
    /// The supervisor's leaf, once [`SandboxCgroup::charge_supervisor`] made it.
    supervisor_leaf: Option<PathBuf>,
    /// The hierarchy's directory and its controllers (v1: as named in /proc/self/cgroup);
    /// `None` for fake cgroupfs trees in unit tests.
    hierarchy: Option<(PathBuf, Vec<String>)>,
}

impl CgroupDir {
    /// Where the sandbox's processes are in this hierarchy: the workload leaf, if any.
    fn processes(&self) -> &Path {
        self.leaf.as_deref().unwrap_or(&self.path)
    }
}

/// Makes `path`, a child cgroup of a directory nsbox made (a leaf of `nsbox-<id>`), and opens
/// it (see [`open_made`]).
fn make_child(path: &Path, fixture: Option<&Path>) -> Result<OwnedFd, CgroupError> {
    std::fs::create_dir(path).map_err(|source| CgroupError::Create {
        path: path.to_path_buf(),
        source,
    })?;
    open_made(path, fixture)
}

/// Opens a cgroup directory nsbox just made, for `clone3` and control-file writes. `fixture`:
/// the root of a fake cgroupfs whose control files the new directory gets (unit tests).
fn open_made(path: &Path, fixture: Option<&Path>) -> Result<OwnedFd, CgroupError> {
    if let Some(root) = fixture {
        populate_fixture(root, path).map_err(|source| CgroupError::Create {
            path: path.to_path_buf(),
            source,
        })?;
    }
    // Not O_PATH: clone3(CLONE_INTO_CGROUP) rejects O_PATH fds.
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| CgroupError::Open {
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// What `create` will do, decided before touching anything.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) dirs: Vec<DirPlan>,
    pub(crate) warnings: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct DirPlan {
    pub(crate) hierarchy: Hierarchy,
    pub(crate) path: PathBuf,
    pub(crate) controllers: Vec<Controller>,
    pub(crate) writes: Vec<LimitWrite>,
    pub(crate) freezer: bool,
    /// v2 only: the workload's leaf (see [`CgroupDir::leaf`]) and the limits written there.
    pub(crate) leaf: Option<(PathBuf, Vec<LimitWrite>)>,
}

/// One value for one control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LimitWrite {
    pub(crate) file: &'static str,
    pub(crate) value: String,
    /// `Some(warning)`: the file may be missing on some hosts; skip it and warn.
    pub(crate) if_absent: Option<String>,
}

impl LimitWrite {
    fn required(file: &'static str, value: impl ToString) -> Self {
        LimitWrite {
            file,
            value: value.to_string(),
            if_absent: None,
        }
    }

    fn optional(file: &'static str, value: impl ToString, warning: String) -> Self {
        LimitWrite {
            file,
            value: value.to_string(),
            if_absent: Some(warning),
        }
    }
}

impl SandboxCgroup {
    /// Create `nsbox-<id>` in every hierarchy that carries a controller nsbox uses, write the
    /// limits, and open the fds the sandbox's first process joins through. Everything is checked
    /// before the first directory is made; if a later step fails, what was made is removed.
    ///
    /// A controller with a limit must be usable (available, enabled for child cgroups on v2,
    /// writable), or this fails with a hint. A controller without a limit is still used when it
    /// can be (for its counters) and otherwise skipped with an entry in [`Self::warnings`].
    pub fn create(
        layout: &CgroupLayout,
        id: &str,
        limits: &CgroupLimits,
    ) -> Result<Self, CgroupError> {
        Self::create_at(layout, id, limits, false, None)
    }

    /// [`SandboxCgroup::create`], and with `freezable` for a sandbox that can be paused ([`SandboxCgroup::freeze`]):
    /// when none of its directories is on cgroup v2 (whose `cgroup.freeze` every cgroup has),
    /// it also gets a directory in the v1 freezer hierarchy, joined at start like the others,
    /// so that every process it ever has is in it. Only sessions pay that extra directory.
    pub fn create_with_freezer(
        layout: &CgroupLayout,
        id: &str,
        limits: &CgroupLimits,
        freezable: bool,
    ) -> Result<Self, CgroupError> {
        Self::create_at(layout, id, limits, freezable, None)
    }

    /// [`SandboxCgroup::create_with_freezer`] at `at` (see [`CgroupAt`]) instead of
    /// `nsbox-<id>` in each hierarchy. Missing parents are made (and removed again with the
    /// sandbox when empty); on cgroup v2 a parent made here gets the sandbox's controllers in
    /// its `cgroup.subtree_control`, which is nsbox's to write since nsbox made it.
    pub fn create_at(
        layout: &CgroupLayout,
        id: &str,
        limits: &CgroupLimits,
        freezable: bool,
        at: Option<&CgroupAt>,
    ) -> Result<Self, CgroupError> {
        let plan = plan(layout, id, limits, freezable, at)?;
        let registry = at.map(|_| ParentRegistry::path(layout.fs_root()));
        // Held while parents are made and the directories go in them, so that no other
        // sandbox removes a parent in between.
        let mut lock = match &registry {
            Some(path) => Some(ParentRegistry::lock(path)?),
            None => None,
        };
        let mut cgroup = SandboxCgroup {
            id: id.to_string(),
            registry: None,
            engine_owned: false,
            dirs: Vec::new(),
            v2_fd: None,
            v2_leaf_fd: None,
            tasks_fds: Vec::new(),
            warnings: plan.warnings,
            charged: None,
        };
        let mut result = Ok(());
        for dir in plan.dirs {
            result = cgroup.make_dir(dir, lock.as_mut());
            if result.is_err() {
                break;
            }
        }
        drop(lock);
        cgroup.registry = registry;
        cgroup.engine_owned = result.is_ok() && at.is_some();
        // On error `cgroup` drops here, which removes the directories (and parents) made so far.
        result.map(|()| cgroup)
    }

    fn make_dir(
        &mut self,
        plan: DirPlan,
        registry: Option<&mut ParentRegistry>,
    ) -> Result<(), CgroupError> {
        let path = plan.path;
        if let Some(registry) = registry {
            make_parents(registry, &plan.hierarchy, &path, &plan.controllers)?;
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            // Never adopt an existing directory: it may belong to a running sandbox.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(CgroupError::AlreadyExists { path })
            }
            Err(source) => return Err(CgroupError::Create { path, source }),
        }
        self.dirs.push(CgroupDir {
            path: path.clone(),
            version: plan.hierarchy.version,
            controllers: plan.controllers.clone(),
            freezer: plan.freezer,
            leaf: None,
            supervisor_leaf: None,
            hierarchy: plan.hierarchy.on_cgroupfs.then(|| {
                (
                    plan.hierarchy.path.clone(),
                    plan.hierarchy.controllers.clone(),
                )
            }),
        });
        let fixture = (!plan.hierarchy.on_cgroupfs).then_some(plan.hierarchy.path.as_path());
        let dir_fd = open_made(&path, fixture)?;
        self.write_limits(&dir_fd, &path, &plan.writes)?;
        if let Some((leaf, writes)) = &plan.leaf {
            // Recorded first, so that a failure below still removes it with `nsbox-<id>`.
            if let Some(dir) = self.dirs.last_mut() {
                dir.leaf = Some(leaf.clone());
            }
            let leaf_fd = make_child(leaf, fixture)?;
            self.write_limits(&leaf_fd, leaf, writes)?;
            self.v2_leaf_fd = Some(leaf_fd);
        }

        match plan.hierarchy.version {
            CgroupVersion::V2 => self.v2_fd = Some(dir_fd),
            CgroupVersion::V1 => {
                let tasks = rustix::fs::openat(
                    &dir_fd,
                    "tasks",
                    OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(|e| CgroupError::Open {
                    path: path.join("tasks"),
                    source: e.into(),
                })?;
                self.tasks_fds.push(tasks);
            }
        }
        Ok(())
    }

    fn write_limits(
        &mut self,
        dir_fd: &OwnedFd,
        path: &Path,
        writes: &[LimitWrite],
    ) -> Result<(), CgroupError> {
        for w in writes {
            match write_control(dir_fd, path, w.file, &w.value)? {
                Written::Yes => {}
                Written::Absent => match &w.if_absent {
                    Some(warning) => self.warnings.push(warning.clone()),
                    None => {
                        return Err(CgroupError::WriteLimit {
                            file: path.join(w.file),
                            value: w.value.clone(),
                            source: io::ErrorKind::NotFound.into(),
                        })
                    }
                },
            }
        }
        Ok(())
    }

    /// The sandbox id this cgroup was created for.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The v2 directory, opened `O_RDONLY|O_DIRECTORY|O_CLOEXEC`, for `clone3`'s
    /// `CLONE_INTO_CGROUP`. `None` when no controller of the sandbox is on cgroup v2.
    pub fn clone_into_fd(&self) -> Option<BorrowedFd<'_>> {
        self.v2_leaf_fd
            .as_ref()
            .or(self.v2_fd.as_ref())
            .map(|fd| fd.as_fd())
    }

    /// The v2 directory `nsbox-<id>` itself (not its leaf), for `hold_in_use`'s flock.
    pub(crate) fn v2_dir_fd(&self) -> Option<BorrowedFd<'_>> {
        self.v2_fd.as_ref().map(|fd| fd.as_fd())
    }

    /// The v1 `tasks` files, opened `O_WRONLY|O_CLOEXEC`, one per v1 directory; pass them to
    /// [`join_self`] in the child. Empty on pure v2 hosts.
    pub fn self_join_fds(&self) -> &[OwnedFd] {
        &self.tasks_fds
    }

    /// Things that work differently from what the limits ask for (swap accounting off, a
    /// controller without a limit skipped), for the user's log.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The directories created, in creation order (v2 first).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.path.clone()).collect()
    }

    /// Where the sandbox's processes are, one directory per hierarchy: [`Self::paths`], with
    /// the v2 directory's workload leaf in its place where it has one.
    pub fn process_paths(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .map(|d| d.processes().to_path_buf())
            .collect()
    }

    /// How many processes the kernel OOM-killed in the sandbox (v2 `memory.events` `oom_kill`,
    /// v1 `memory.oom_control` `oom_kill`). 0 when the sandbox has no memory cgroup, since then
    /// no memory limit of nsbox's can have caused a kill.
    pub fn oom_kills(&self) -> Result<u64, CgroupError> {
        let Some(dir) = self.dir_with(Controller::Memory) else {
            return Ok(0);
        };
        let file = dir.processes().join(match dir.version {
            CgroupVersion::V2 => "memory.events",
            CgroupVersion::V1 => "memory.oom_control",
        });
        let text = read_required(&file)?;
        keyed_number(&file, &text, "oom_kill")?.ok_or_else(|| CgroupError::Parse {
            path: file,
            reason: "no oom_kill line (kernel older than 4.13?)".to_string(),
        })
    }

    /// Current counters. Values this host does not provide are `None`.
    pub fn stats(&self) -> Result<CgroupStats, CgroupError> {
        let mut stats = CgroupStats::default();
        if let Some(dir) = self.dir_with(Controller::Memory) {
            let (current, peak) = match dir.version {
                CgroupVersion::V2 => ("memory.current", "memory.peak"),
                CgroupVersion::V1 => ("memory.usage_in_bytes", "memory.max_usage_in_bytes"),
            };
            stats.memory_current_bytes = read_number(&dir.processes().join(current))?;
            stats.memory_peak_bytes = read_number(&dir.processes().join(peak))?;
        }
        if let Some(dir) = self.dir_with(Controller::Pids) {
            stats.pids_current = read_number(&dir.processes().join("pids.current"))?;
        }
        // On v2, cpu.stat exists in every cgroup, with or without the cpu controller: the
        // workload's leaf, so a paused sandbox's usage stays put while its supervisor answers.
        // On v1 the usage comes from cpuacct, which is only reachable when co-mounted with cpu.
        let v2 = self.dirs.iter().find(|d| d.version == CgroupVersion::V2);
        if let Some(dir) = v2 {
            let file = dir.processes().join("cpu.stat");
            if let Some(text) = read_optional(&file)? {
                stats.cpu_usage_usec = keyed_number(&file, &text, "usage_usec")?;
            }
        } else if let Some(dir) = self.dir_with(Controller::Cpu) {
            stats.cpu_usage_usec =
                read_number(&dir.path.join("cpuacct.usage"))?.map(|ns| ns / 1000);
        }
        Ok(stats)
    }

    /// Remove every directory created. The sandbox's processes must be gone; tasks that are
    /// still exiting (`EBUSY`) are waited for briefly. Tries all directories and reports the
    /// first failure.
    pub fn remove(mut self) -> Result<(), CgroupError> {
        self.remove_all(REMOVE_PATIENCE)
    }

    fn remove_all(&mut self, patience: Duration) -> Result<(), CgroupError> {
        self.uncharge_supervisor();
        // Close our fds first: the kernel does not need it, but nothing of ours should keep
        // pointing at a directory that is going away.
        self.v2_fd = None;
        self.tasks_fds.clear();
        if self.engine_owned {
            self.dirs.clear();
            self.registry = None;
            return Ok(());
        }
        let mut first_error = None;
        let removed: Vec<PathBuf> = self.dirs.iter().map(|d| d.path.clone()).collect();
        for dir in std::mem::take(&mut self.dirs).iter().rev() {
            let leaves = dir.supervisor_leaf.iter().chain(&dir.leaf);
            for path in leaves.chain(std::iter::once(&dir.path)) {
                if let Err(source) = remove_cgroup_dir(path, patience) {
                    let busy = source.raw_os_error() == Some(libc::EBUSY);
                    let err = CgroupError::Remove {
                        hint: busy.then(|| {
                            format!(
                                "processes are still in it (listed in {}); stop them first",
                                path.join("cgroup.procs").display()
                            )
                        }),
                        path: path.clone(),
                        source,
                    };
                    first_error.get_or_insert(err);
                }
            }
        }
        if let Some(registry) = self.registry.take() {
            remove_parents(&registry, &removed);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Where this sandbox can be frozen: its v2 directory's workload leaf, or the directory
    /// (`cgroup.freeze`), else its v1 freezer directory (`freezer.state`).
    fn freezer_dir(&self) -> Option<(CgroupVersion, &Path)> {
        self.dirs
            .iter()
            .find(|d| d.version == CgroupVersion::V2)
            .or_else(|| self.dirs.iter().find(|d| d.freezer))
            .map(|d| (d.version, d.processes()))
    }

    /// True when [`SandboxCgroup::freeze`] can work.
    pub fn can_freeze(&self) -> bool {
        self.freezer_dir().is_some()
    }

    /// Freezes every process of the sandbox (they stop being scheduled, use no CPU, and see no
    /// signal until thawed; SIGKILL included, so thaw before killing) and returns once the
    /// kernel reports the cgroup frozen.
    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    /// Lets the sandbox's processes run again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    /// Whether the cgroup is frozen now (`None` without a freezer).
    pub fn is_frozen(&self) -> Result<Option<bool>, CgroupError> {
        let Some((version, dir)) = self.freezer_dir() else {
            return Ok(None);
        };
        freezer_state(version, dir).map(Some)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let (version, dir) = self.freezer_dir().ok_or(CgroupError::NoFreezer)?;
        let (file, value) = match (version, frozen) {
            (CgroupVersion::V2, true) => ("cgroup.freeze", "1"),
            (CgroupVersion::V2, false) => ("cgroup.freeze", "0"),
            (CgroupVersion::V1, true) => ("freezer.state", "FROZEN"),
            (CgroupVersion::V1, false) => ("freezer.state", "THAWED"),
        };
        let deadline = std::time::Instant::now() + FREEZE_PATIENCE;
        loop {
            // v1 may stay FREEZING when a task is in an uninterruptible sleep; writing FROZEN
            // again retries the tasks that were not frozen yet.
            std::fs::write(dir.join(file), value).map_err(|source| CgroupError::WriteLimit {
                file: dir.join(file),
                value: value.to_string(),
                source,
            })?;
            if freezer_state(version, dir)? == frozen {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(CgroupError::FreezeTimeout {
                    path: dir.to_path_buf(),
                    state: if frozen { "frozen" } else { "thawed" },
                    after: FREEZE_PATIENCE,
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Charges the calling process — the sandbox's own supervisor: its output relay, resolver
    /// and proxy — to the sandbox's CPU limit and usage. Only where the sandbox's memory and
    /// pids limits, its freezer and its kill cannot reach the supervisor:
    /// - cgroup v1: into the sandbox's cpu cgroup when that hierarchy holds the cpu controller
    ///   alone (cpu,cpuacct);
    /// - cgroup v2, where a process has one cgroup for every controller: into the sibling leaf
    ///   [`SUPERVISOR_LEAF`] of the workload's [`WORKLOAD_LEAF`], made now; the cpu limit is on
    ///   their parent `nsbox-<id>`, the memory and pids limits and the freezer on the
    ///   workload's leaf only (so the supervisor is never OOM-killed or frozen with it).
    ///
    /// Returns whether it was charged; undone before the directories are removed (a killed
    /// supervisor leaves the cgroup by dying).
    pub fn charge_supervisor(&mut self) -> Result<bool, CgroupError> {
        if self.charged.is_some() {
            return Ok(true);
        }
        let Some(at) = self.dirs.iter().position(|d| {
            d.leaf.is_some()
                || (d.version == CgroupVersion::V1
                    && !d.freezer
                    && d.controllers == [Controller::Cpu])
        }) else {
            return Ok(false);
        };
        let dir = &self.dirs[at];
        let Some((root, names)) = &dir.hierarchy else {
            return Ok(false);
        };
        // This process's cgroup now, from /proc/self/cgroup's line of the same hierarchy.
        let mut wanted: Vec<&str> = names.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        let v2 = dir.version == CgroupVersion::V2;
        let own = super::layout::read_self_cgroups(Path::new("/"))
            .into_iter()
            .find(|(controllers, _)| {
                if v2 {
                    return controllers.is_empty();
                }
                let mut have: Vec<&str> = controllers.split(',').collect();
                have.sort_unstable();
                have == wanted
            })
            .map(|(_, path)| root.join(path.trim_start_matches('/')));
        let Some(own) = own.filter(|p| p.join("cgroup.procs").exists()) else {
            return Ok(false);
        };
        let back_path = own.join("cgroup.procs");
        let back = rustix::fs::open(
            &back_path,
            OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| CgroupError::Open {
            path: back_path,
            source: e.into(),
        })?;
        let target = if v2 {
            let leaf = dir.path.join(SUPERVISOR_LEAF);
            // Recorded first, so that it is removed with `nsbox-<id>` whatever fails below.
            self.dirs[at].supervisor_leaf = Some(leaf.clone());
            drop(make_child(&leaf, None)?);
            leaf
        } else {
            dir.path.clone()
        };
        // "0": the writing process, all its threads (v1 and v2 alike).
        let procs = target.join("cgroup.procs");
        std::fs::write(&procs, "0").map_err(|source| CgroupError::WriteLimit {
            file: procs,
            value: "0".into(),
            source,
        })?;
        self.charged = Some(back);
        Ok(true)
    }

    /// Moves the supervisor back to its own cpu cgroup (see
    /// [`SandboxCgroup::charge_supervisor`]); a no-op when it was not charged.
    pub fn uncharge_supervisor(&mut self) {
        if let Some(back) = self.charged.take() {
            if let Err(e) = rustix::io::write(&back, b"0") {
                tracing::warn!(id = %self.id, "supervisor not moved back from the sandbox's cpu cgroup: {e}");
            }
        }
    }

    fn dir_with(&self, c: Controller) -> Option<&CgroupDir> {
        self.dirs.iter().find(|d| d.controllers.contains(&c))
    }
}

/// The parents nsbox made for [`CgroupAt`] paths (`ctr run`'s `/<namespace>/<id>` makes
/// `/<namespace>`), one path a line in `<fs root>/run/nsbox/cgroup-parents`, under an
/// exclusive flock of the directory `<fs root>/run/nsbox`. Several sandboxes share such a
/// parent; whichever finds it empty when it removes its own directory removes it too. A parent
/// nsbox did not make is never in the file, so it is never removed. The file is removed with
/// its last line, so nothing stays in the run directory once no such parent is left; the lock
/// is the directory's, not the file's, so that removing the file races no other holder.
struct ParentRegistry {
    _lock: std::fs::File,
    file: PathBuf,
}

impl ParentRegistry {
    fn path(fs_root: &Path) -> PathBuf {
        super::layout::under_root(fs_root, Path::new("/run/nsbox/cgroup-parents"))
    }

    fn lock(path: &Path) -> Result<ParentRegistry, CgroupError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let io_err = |source| CgroupError::Open {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let lock = std::fs::File::open(dir).map_err(io_err)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(e.into()))?;
        Ok(ParentRegistry {
            _lock: lock,
            file: path.to_path_buf(),
        })
    }

    fn entries(&mut self) -> Vec<PathBuf> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        text.lines()
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect()
    }

    fn store(&mut self, entries: &[PathBuf]) {
        let result = if entries.is_empty() {
            match std::fs::remove_file(&self.file) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                other => other,
            }
        } else {
            let mut text = String::new();
            for e in entries {
                text.push_str(&e.to_string_lossy());
                text.push('\n');
            }
            std::fs::write(&self.file, text)
        };
        if let Err(e) = result {
            tracing::warn!("cgroup parents registry not written: {e}");
        }
    }
}

/// Makes the missing directories between the hierarchy's root and `path`'s parent, and notes
/// each in the registry (held locked by the caller).
fn make_parents(
    registry: &mut ParentRegistry,
    hierarchy: &Hierarchy,
    path: &Path,
    controllers: &[Controller],
) -> Result<(), CgroupError> {
    let Some(parent) = path.parent() else {
        return Ok(());
    };
    let Ok(rel) = parent.strip_prefix(&hierarchy.path) else {
        return Ok(());
    };
    let mut dir = hierarchy.path.clone();
    for part in rel.components() {
        dir.push(part);
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                let mut entries = registry.entries();
                entries.push(dir.clone());
                registry.store(&entries);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        }
        if !hierarchy.on_cgroupfs {
            populate_fixture(&hierarchy.path, &dir).map_err(|source| CgroupError::Create {
                path: dir.clone(),
                source,
            })?;
        }
        if hierarchy.version == CgroupVersion::V2 && !controllers.is_empty() {
            // Children of a v2 cgroup get only the controllers its subtree_control lists.
            let value = controllers
                .iter()
                .map(|c| format!("+{c}"))
                .collect::<Vec<_>>()
                .join(" ");
            let file = dir.join("cgroup.subtree_control");
            std::fs::write(&file, &value).map_err(|source| CgroupError::WriteLimit {
                file,
                value,
                source,
            })?;
        }
    }
    Ok(())
}

/// After the sandbox's directories `removed` are gone: removes their registered parents,
/// innermost first, stopping at the first that is not nsbox's or still holds another
/// sandbox's cgroup.
fn remove_parents(registry: &Path, removed: &[PathBuf]) {
    let mut registry = match ParentRegistry::lock(registry) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("cgroup parents not removed: {e}");
            return;
        }
    };
    let mut entries = registry.entries();
    let before = entries.len();
    for dir in removed {
        for parent in dir.ancestors().skip(1) {
            let Some(at) = entries.iter().position(|e| e == parent) else {
                break;
            };
            match remove_cgroup_dir(parent, Duration::ZERO) {
                Ok(()) => {
                    entries.remove(at);
                }
                Err(_) => break,
            }
        }
    }
    if entries.len() != before || entries.is_empty() {
        registry.store(&entries);
    }
}

/// For `nsbox prune`: removes the registered parents that are empty now (a container killed
/// before its `delete` leaves its parent behind), deepest first, and forgets those already
/// gone. Returns how many it removed.
pub fn prune_parents(fs_root: &Path) -> usize {
    let Ok(mut registry) = ParentRegistry::lock(&ParentRegistry::path(fs_root)) else {
        return 0;
    };
    let mut entries = registry.entries();
    // Deepest first, so that a parent of a parent empties before its turn.
    entries.sort_by_key(|e| std::cmp::Reverse(e.components().count()));
    let mut removed = 0;
    entries.retain(|dir| match remove_cgroup_dir(dir, Duration::ZERO) {
        Ok(()) => {
            removed += 1;
            false
        }
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    });
    registry.store(&entries);
    removed
}

/// Removes the directories of a sandbox made at a [`CgroupAt`] path (see
/// [`SandboxCgroup::create_at`]), innermost first, then the parents nsbox made for them that
/// are empty now. Directories already gone count as removed; processes still leaving
/// (`EBUSY`) are waited for briefly.
/// `fs_root` is the layout's (`/` on a host).
pub fn remove_named(fs_root: &Path, dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let mut first_error = None;
    for dir in dirs.iter().rev() {
        if let Err(source) = remove_cgroup_dir(dir, REMOVE_PATIENCE) {
            first_error.get_or_insert(CgroupError::Remove {
                path: dir.clone(),
                source,
                hint: None,
            });
        }
    }
    remove_parents(&ParentRegistry::path(fs_root), dirs);
    first_error.map_or(Ok(()), Err)
}

/// Where a sandbox's cgroup goes when the caller names it (an OCI bundle's
/// `linux.cgroupsPath`): a path of plain names, the same below every hierarchy's root, in
/// place of `nsbox-<id>`. Checked when made: no `..`, no `.`, not empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupAt(PathBuf);

impl CgroupAt {
    /// `path` as given; a leading `/` is allowed (it means the hierarchy's root either way,
    /// which is where nsbox's own cgroups go too).
    pub fn new(path: &str) -> Result<CgroupAt, CgroupError> {
        let invalid = |reason| CgroupError::InvalidPath {
            path: path.to_string(),
            reason,
        };
        let rel = path.trim_start_matches('/');
        if rel.is_empty() {
            return Err(invalid(
                "names the hierarchy's root, which holds every other cgroup",
            ));
        }
        let mut out = PathBuf::new();
        for part in rel.split('/') {
            match part {
                "" => continue,
                "." | ".." => return Err(invalid("may not contain `.` or `..`")),
                p if p.contains('\0') => return Err(invalid("may not contain a NUL byte")),
                p => out.push(p),
            }
        }
        Ok(CgroupAt(out))
    }

    /// The path below a hierarchy's root.
    pub fn relative(&self) -> &Path {
        &self.0
    }
}

/// The directories [`SandboxCgroup::create_at`] makes for these arguments (the plan is pure
/// and the same for the same layout), with each one's hierarchy: for a process that is to be
/// put into a sandbox's cgroups by another process than the one that made them (so a v2
/// directory's workload leaf, where it has one, in its place).
pub fn planned_dirs(
    layout: &CgroupLayout,
    id: &str,
    limits: &CgroupLimits,
    freezable: bool,
    at: Option<&CgroupAt>,
) -> Result<Vec<(Hierarchy, PathBuf)>, CgroupError> {
    Ok(plan(layout, id, limits, freezable, at)?
        .dirs
        .into_iter()
        .map(|d| {
            let path = d.leaf.map_or(d.path, |(leaf, _)| leaf);
            (d.hierarchy, path)
        })
        .collect())
}

/// The `cgroup.procs` of the calling process's own cgroup in `hierarchy` (from
/// `/proc/self/cgroup`), opened for writing: where a process moved into a sandbox's cgroup
/// goes back to (by writing `0`) before the sandbox's cgroup is removed.
pub fn own_cgroup_procs(hierarchy: &Hierarchy) -> Result<OwnedFd, CgroupError> {
    let mut wanted: Vec<&str> = hierarchy.controllers.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    let own = super::layout::read_self_cgroups(Path::new("/"))
        .into_iter()
        .find(|(controllers, _)| match hierarchy.version {
            CgroupVersion::V2 => controllers.is_empty(),
            CgroupVersion::V1 => {
                let mut have: Vec<&str> = controllers.split(',').collect();
                have.sort_unstable();
                have == wanted
            }
        })
        .map(|(_, path)| hierarchy.path.join(path.trim_start_matches('/')))
        .ok_or_else(|| CgroupError::Parse {
            path: PathBuf::from("/proc/self/cgroup"),
            reason: format!(
                "no line for the hierarchy at {}",
                hierarchy.mount_point.display()
            ),
        })?;
    let procs = own.join("cgroup.procs");
    rustix::fs::open(
        &procs,
        OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| CgroupError::Open {
        path: procs,
        source: e.into(),
    })
}

/// Moves process `pid` (all its threads) into the cgroup directory `dir`.
pub fn move_process(dir: &Path, pid: i32) -> Result<(), CgroupError> {
    let file = dir.join("cgroup.procs");
    std::fs::write(&file, pid.to_string()).map_err(|source| CgroupError::WriteLimit {
        file,
        value: pid.to_string(),
        source,
    })
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        if self.dirs.is_empty() {
            return;
        }
        if let Err(e) = self.remove_all(DROP_PATIENCE) {
            tracing::warn!(id = %self.id, "sandbox cgroup not removed: {e}");
        }
    }
}

/// v2 `cgroup.events` `frozen`, v1 `freezer.state` == FROZEN (FREEZING counts as not yet).
fn freezer_state(version: CgroupVersion, dir: &Path) -> Result<bool, CgroupError> {
    match version {
        CgroupVersion::V2 => {
            let file = dir.join("cgroup.events");
            let text = read_required(&file)?;
            Ok(keyed_number(&file, &text, "frozen")? == Some(1))
        }
        CgroupVersion::V1 => Ok(read_required(&dir.join("freezer.state"))?.trim() == "FROZEN"),
    }
}

/// Put the calling process into each v1 cgroup by writing `0` (= the caller) to the `tasks` fds
/// from [`SandboxCgroup::self_join_fds`]. Called in the freshly cloned, single-threaded sandbox
/// child before it runs anything else: a `tasks` write moves only the calling thread, and avoids
/// the global rwsem a `cgroup.procs` write takes. Does not allocate, so it is fine after fork.
pub fn join_self(fds: &[OwnedFd]) -> io::Result<()> {
    for fd in fds {
        match rustix::io::write(fd, b"0") {
            Ok(1) => {}
            Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Decide what to create and write, without touching the filesystem.
pub(crate) fn plan(
    layout: &CgroupLayout,
    id: &str,
    limits: &CgroupLimits,
    freezable: bool,
    at: Option<&CgroupAt>,
) -> Result<Plan, CgroupError> {
    validate_id(id)?;
    validate_limits(limits)?;
    let dir_name = match at {
        Some(at) => at.relative().to_path_buf(),
        None => PathBuf::from(format!("{DIR_PREFIX}{id}")),
    };
    let mut warnings = Vec::new();
    let mut dirs: Vec<DirPlan> = Vec::new();

    for c in Controller::ALL {
        let wanted = limit_of(limits, c).is_some();
        let Some(hierarchy) = usable_hierarchy(layout, c, wanted, &mut warnings)? else {
            continue;
        };
        match dirs.iter_mut().find(|d| d.hierarchy.path == hierarchy.path) {
            Some(d) => d.controllers.push(c),
            None => dirs.push(DirPlan {
                path: hierarchy.path.join(&dir_name),
                hierarchy: hierarchy.clone(),
                controllers: vec![c],
                writes: Vec::new(),
                freezer: false,
                leaf: None,
            }),
        }
    }
    let has_v2 = dirs
        .iter()
        .any(|d| d.hierarchy.version == CgroupVersion::V2);
    if freezable && !has_v2 {
        // A freezer that cannot be used is not an error here: `freeze` says so when asked.
        match layout.freezer_v1() {
            Some(h) if !h.read_only => match dirs.iter_mut().find(|d| d.hierarchy.path == h.path) {
                Some(d) => d.freezer = true,
                None => dirs.push(DirPlan {
                    path: h.path.join(&dir_name),
                    hierarchy: h.clone(),
                    controllers: Vec::new(),
                    writes: Vec::new(),
                    freezer: true,
                    leaf: None,
                }),
            },
            _ => {}
        }
    }
    // v2 first: it is the directory the sandbox is cloned into, and the one that tracks all
    // processes; v1 directories follow in controller order.
    dirs.sort_by_key(|d| d.hierarchy.version != CgroupVersion::V2);
    for d in &mut dirs {
        let v2 = d.hierarchy.version == CgroupVersion::V2;
        // A v2 directory nsbox names itself, with the cpu controller, gets a workload leaf so
        // that the supervisor can be charged beside it (see `charge_supervisor`); a path an
        // engine named stays one directory, as its shim expects.
        if v2 && at.is_none() && d.controllers.contains(&Controller::Cpu) {
            let leaf = d.path.join(WORKLOAD_LEAF);
            let below: Vec<Controller> = d
                .controllers
                .iter()
                .copied()
                .filter(|c| *c != Controller::Cpu)
                .collect();
            let writes = limit_writes(d.hierarchy.version, &below, limits, &leaf);
            d.writes = limit_writes(d.hierarchy.version, &[Controller::Cpu], limits, &d.path);
            // Children of a v2 cgroup get only the controllers in its subtree_control: the
            // leaf's own, while the cpu limit stays above the workload and the supervisor.
            if !below.is_empty() {
                let value: Vec<String> = below.iter().map(|c| format!("+{c}")).collect();
                d.writes.push(LimitWrite::required(
                    "cgroup.subtree_control",
                    value.join(" "),
                ));
            }
            d.leaf = Some((leaf, writes));
        } else {
            d.writes = limit_writes(d.hierarchy.version, &d.controllers, limits, &d.path);
        }
    }
    Ok(Plan { dirs, warnings })
}

/// The hierarchy to use for `c`, `None` (with a warning) to skip it, or an error when a limit
/// was asked for and cannot be applied.
fn usable_hierarchy<'a>(
    layout: &'a CgroupLayout,
    c: Controller,
    wanted: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<&'a Hierarchy>, CgroupError> {
    let problem = match layout.placement(c) {
        Placement::Unavailable { reason, hint } => {
            if wanted {
                return Err(CgroupError::ControllerUnavailable {
                    controller: c,
                    reason: reason.clone(),
                    hint: hint.clone(),
                });
            }
            format!("{c} controller not available ({reason})")
        }
        Placement::V2 {
            path,
            enabled: false,
        } => {
            if wanted {
                let enabled = layout
                    .v2()
                    .map(|h| h.subtree_control.join(" "))
                    .unwrap_or_default();
                return Err(CgroupError::ControllerNotEnabled {
                    controller: c,
                    parent: path.clone(),
                    enabled: if enabled.is_empty() { "nothing".to_string() } else { enabled },
                    hint: format!(
                        "enable it for child cgroups as root with `echo +{c} > {}` (nsbox never changes cgroups it did not create), or run without a {c} limit",
                        path.join("cgroup.subtree_control").display()
                    ),
                });
            }
            format!(
                "{c} controller not enabled in {}",
                path.join("cgroup.subtree_control").display()
            )
        }
        Placement::V2 { .. } | Placement::V1 { .. } => match layout.hierarchy_of(c) {
            Some(h) if h.read_only => {
                if wanted {
                    return Err(CgroupError::ReadOnly {
                        path: h.path.clone(),
                        controller: c,
                    });
                }
                format!("{c} hierarchy {} is read-only", h.path.display())
            }
            Some(h) => return Ok(Some(h)),
            None => format!("{c} hierarchy not found in the layout"),
        },
    };
    warnings.push(format!(
        "{problem}: the sandbox's {c} use is not tracked (no {c} limit was asked for)"
    ));
    Ok(None)
}

fn limit_of(limits: &CgroupLimits, c: Controller) -> Option<u64> {
    match c {
        Controller::Memory => limits.memory_bytes,
        Controller::Pids => limits.pids,
        Controller::Cpu => limits.cpu_millis,
    }
}

fn validate_limits(limits: &CgroupLimits) -> Result<(), CgroupError> {
    let invalid = |limit, value, reason| {
        Err(CgroupError::InvalidLimit {
            limit,
            value,
            reason,
        })
    };
    if limits.memory_bytes == Some(0) {
        return invalid("memory", 0, "must be more than 0 bytes");
    }
    if limits.pids == Some(0) {
        return invalid("pids", 0, "must allow at least 1 task");
    }
    if let Some(m) = limits.cpu_millis {
        // The kernel's smallest CFS quota is 1 ms per 100 ms period, i.e. 0.01 core.
        if m < 10 {
            return invalid("cpu", m, "must be at least 10 millicores (0.01 core)");
        }
        if cpu_quota_us(m).is_none() {
            return invalid("cpu", m, "is too large");
        }
    }
    Ok(())
}

/// CFS quota per [`CPU_PERIOD_US`] for `millis` thousandths of a core.
fn cpu_quota_us(millis: u64) -> Option<u64> {
    millis.checked_mul(CPU_PERIOD_US / 1000)
}

/// The control files and values for one directory. `None` limits write nothing, leaving the
/// kernel default ("max" / unlimited) in place.
fn limit_writes(
    version: CgroupVersion,
    controllers: &[Controller],
    limits: &CgroupLimits,
    dir: &Path,
) -> Vec<LimitWrite> {
    let mut w = Vec::new();
    for c in controllers {
        match (version, c) {
            (CgroupVersion::V2, Controller::Memory) => {
                if let Some(bytes) = limits.memory_bytes {
                    w.push(LimitWrite::required("memory.max", bytes));
                    // Without this the sandbox could push its excess to swap instead of
                    // hitting its limit.
                    w.push(LimitWrite::optional(
                        "memory.swap.max",
                        0,
                        format!("{} is absent (swap accounting off): the sandbox may use swap beyond its memory limit", dir.join("memory.swap.max").display()),
                    ));
                }
                // An OOM kill takes the whole sandbox down instead of one process, leaving no
                // half-broken workload behind.
                w.push(LimitWrite::optional(
                    "memory.oom.group",
                    1,
                    format!("{} is absent (kernel < 4.19): an OOM kill stops one process, not the whole sandbox", dir.join("memory.oom.group").display()),
                ));
            }
            (CgroupVersion::V2, Controller::Pids) | (CgroupVersion::V1, Controller::Pids) => {
                if let Some(n) = limits.pids {
                    w.push(LimitWrite::required("pids.max", n));
                }
            }
            (CgroupVersion::V2, Controller::Cpu) => {
                if let Some(quota) = limits.cpu_millis.and_then(cpu_quota_us) {
                    w.push(LimitWrite::required(
                        "cpu.max",
                        format!("{quota} {CPU_PERIOD_US}"),
                    ));
                }
            }
            (CgroupVersion::V1, Controller::Memory) => {
                if let Some(bytes) = limits.memory_bytes {
                    // limit_in_bytes first: the kernel requires memsw >= limit at all times.
                    w.push(LimitWrite::required("memory.limit_in_bytes", bytes));
                    w.push(LimitWrite::optional(
                        "memory.memsw.limit_in_bytes",
                        bytes,
                        format!("{} is absent (swap accounting off; boot with swapaccount=1): the sandbox may use swap beyond its memory limit", dir.join("memory.memsw.limit_in_bytes").display()),
                    ));
                    w.push(v1_tcp_limit(bytes, dir));
                }
            }
            (CgroupVersion::V1, Controller::Cpu) => {
                if let Some(quota) = limits.cpu_millis.and_then(cpu_quota_us) {
                    w.push(LimitWrite::required("cpu.cfs_period_us", CPU_PERIOD_US));
                    w.push(LimitWrite::required("cpu.cfs_quota_us", quota));
                }
            }
        }
    }
    w
}

/// cgroup v1 charges socket buffers to a memory cgroup only once its
/// `memory.kmem.tcp.limit_in_bytes` is set (v2 charges them to `memory.current` always), and
/// then counts them apart from `memory.usage_in_bytes`. Without it, a sandbox holding 64 MiB of
/// memory pinned half a gigabyte of TCP buffers over loopback. The sandbox's memory limit is
/// used as its TCP budget too: written before any process joins, so every socket of the
/// sandbox is charged. Absent on kernels without kernel-memory accounting (a warning).
fn v1_tcp_limit(memory_bytes: u64, dir: &Path) -> LimitWrite {
    LimitWrite::optional(
        "memory.kmem.tcp.limit_in_bytes",
        memory_bytes,
        format!("{} is absent (no kernel-memory accounting): the sandbox's TCP buffers are not bounded by its memory limit", dir.join("memory.kmem.tcp.limit_in_bytes").display()),
    )
}

fn read_number(path: &Path) -> Result<Option<u64>, CgroupError> {
    read_optional(path)?
        .map(|text| parse_number(path, &text))
        .transpose()
}
