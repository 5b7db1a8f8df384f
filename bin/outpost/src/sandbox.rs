//! Least privilege for every process of the node.
//!
//! In order, before anything else runs:
//! 1. [`restrict_process`]: umask 077 and `no_new_privs`;
//! 2. [`take_service_user`] (`outpost up`, `outpost run`, the cloud node): started as root,
//!    the process creates or finds the service user (`security.user`), gives it the data
//!    dir, empties its capability bounding set and becomes that user, so no capability is
//!    left anywhere in the node; the supervisor's children inherit the user;
//! 3. [`filter_syscalls`]: a seccomp filter refusing (EPERM) the system calls a service
//!    never makes and an attacker would want (debugging other processes, mounting, loading
//!    kernel code, namespaces, keyrings, changing the clock);
//! 4. in each service process, [`close`]: the Landlock sandbox around the files the service
//!    needs ([`outpost_kit::sandbox`]), once its database and keys are open and before its
//!    runtime starts a thread.
//!
//! What could not be enforced is said at start, in the start banner and in every service's
//! `/health` (`sandbox`); `security.require_sandbox` makes it fatal.

use std::path::Path;

use anyhow::Context as _;
use outpost_kit::config::SecurityConfig;
use outpost_kit::sandbox::{Access, Enforced, Files};
use rustix::process::{Gid, Uid};

use crate::config::{NodeConfig, Service};

/// What every process of the node does first, before it creates a file or starts a thread:
/// what it creates is its user's alone (umask 077: directories 0700, files 0600), and
/// neither it nor anything it starts can gain privileges through `execve` (no_new_privs:
/// set-user-ID programs and file capabilities are ignored).
pub fn restrict_process() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    if let Err(e) = rustix::thread::set_no_new_privs(true) {
        eprintln!("outpost: cannot set no_new_privs: {e}");
    }
}

/// Who the node runs as, once [`take_service_user`] ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunAs {
    /// Started as a user other than root (a container's, systemd's `User=`): stays so.
    Started { uid: u32 },
    /// Started as root and became the service user.
    ServiceUser { name: String, uid: u32 },
    /// Stays root: `security.user` is empty and `allow_root` set, or the user could not be
    /// made and the sandbox is not required (`reason`).
    Root { reason: String },
}

impl RunAs {
    /// Whether the node's processes run without root.
    pub fn unprivileged(&self) -> bool {
        !matches!(self, Self::Root { .. })
    }
}

impl std::fmt::Display for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Started { uid } => write!(f, "uid {uid}, no capabilities"),
            Self::ServiceUser { name, uid } => {
                write!(f, "user {name} (uid {uid}), no capabilities")
            }
            Self::Root { reason } => write!(f, "ROOT ({reason})"),
        }
    }
}

/// A user of `/etc/passwd`.
#[derive(Debug, Clone, Copy)]
struct Account {
    uid: u32,
    gid: u32,
}

fn lookup_user(name: &str) -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        Some(Account {
            uid: f.next()?.parse().ok()?,
            gid: f.next()?.parse().ok()?,
        })
    })
}

/// The supplementary groups `name` belongs to in `/etc/group`.
fn groups_of(name: &str) -> Vec<u32> {
    let Ok(group) = std::fs::read_to_string("/etc/group") else {
        return Vec::new();
    };
    group
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            let members = f.get(3)?;
            members
                .split(',')
                .any(|m| m == name)
                .then(|| f.get(2)?.parse().ok())
                .flatten()
        })
        .collect()
}

fn group_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/group")
        .is_ok_and(|g| g.lines().any(|l| l.split(':').next() == Some(name)))
}

/// Creates the system user `name` (no login, no home), in the groups that give access to
/// serial lines and the TPM where those exist.
fn create_user(name: &str) -> anyhow::Result<Account> {
    let groups: Vec<&str> = ["dialout", "tss"]
        .into_iter()
        .filter(|g| group_exists(g))
        .collect();
    // By its path: as root, nothing from PATH is run.
    let useradd = ["/usr/sbin/useradd", "/sbin/useradd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("useradd (the shadow tools) is not installed")?;
    let mut cmd = std::process::Command::new(useradd);
    cmd.args([
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        "--comment",
        "Outpost edge node",
    ]);
    if !groups.is_empty() {
        cmd.arg("--groups").arg(groups.join(","));
    }
    let out = cmd
        .arg(name)
        .output()
        .context("cannot run useradd (the shadow tools)")?;
    if !out.status.success() {
        // Another node starting at the same moment made it first.
        if let Some(made) = lookup_user(name) {
            return Ok(made);
        }
        anyhow::bail!(
            "useradd {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    lookup_user(name).with_context(|| format!("useradd made no user {name}"))
}

/// [`create_user`], again a few times while another process holds the user database's
/// lock (nodes starting at the same moment on a new machine).
fn create_user_retrying(name: &str) -> anyhow::Result<Account> {
    let mut tries = 0;
    loop {
        match create_user(name) {
            Ok(a) => return Ok(a),
            Err(e) => {
                tries += 1;
                let busy = format!("{e:#}").contains("lock");
                if !busy || tries >= 20 {
                    return Err(e);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
                if let Some(made) = lookup_user(name) {
                    return Ok(made);
                }
            }
        }
    }
}

/// Started as root: becomes the service user (see the module documentation). `data_dir`
/// is created if missing and given to the user. A data dir the user cannot reach, or that
/// belongs to another user, is refused; a user that cannot be made is fatal with
/// `require_sandbox`, and leaves the node as root (said at start and in `/health`)
/// otherwise.
pub fn take_service_user(sec: &SecurityConfig, data_dir: &Path) -> anyhow::Result<RunAs> {
    let euid = rustix::process::geteuid();
    if !euid.is_root() {
        return Ok(RunAs::Started { uid: euid.as_raw() });
    }
    if sec.user.is_empty() || sec.user == "root" {
        if sec.allow_root && !sec.require_sandbox {
            return Ok(RunAs::Root {
                reason: "security.user is empty and allow_root is set".into(),
            });
        }
        anyhow::bail!(
            "refusing to run as root: set security.user (a system user the node runs as, \
             `outpost` by default), or security.allow_root = true"
        );
    }
    let account = match lookup_user(&sec.user) {
        Some(a) => a,
        None => match create_user_retrying(&sec.user) {
            Ok(a) => {
                eprintln!("outpost: created the system user {}", sec.user);
                a
            }
            Err(e) if !sec.require_sandbox => {
                return Ok(RunAs::Root {
                    reason: format!("the service user {} cannot be made: {e:#}", sec.user),
                });
            }
            Err(e) => {
                return Err(e.context(format!(
                    "the service user {} does not exist and cannot be made \
                     (security.require_sandbox is set): create it (useradd --system {0}) or \
                     set security.user",
                    sec.user
                )));
            }
        },
    };
    if account.uid == 0 {
        anyhow::bail!(
            "security.user {} is root (uid 0): name an unprivileged user",
            sec.user
        );
    }
    let groups = groups_of(&sec.user);
    give_data_dir(data_dir, &sec.user, account, &groups)?;
    become_user(account, &groups)?;
    Ok(RunAs::ServiceUser {
        name: sec.user.clone(),
        uid: account.uid,
    })
}

/// Makes `data_dir` (if missing) and everything in it the user's; refuses a data dir of
/// another user, and one the user could not reach through its parents.
fn give_data_dir(data_dir: &Path, name: &str, a: Account, groups: &[u32]) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt as _;
    let fresh = !data_dir.exists();
    outpost_storage::ensure_private_dir(data_dir)?;
    let data_dir = data_dir.canonicalize().context("data dir")?;
    let meta = std::fs::metadata(&data_dir).context("data dir")?;
    if meta.uid() != 0 && meta.uid() != a.uid {
        anyhow::bail!(
            "the data dir {} belongs to uid {}, not to the service user {name} (uid {}): \
             give it to {name} (chown -R {name}: {0}), or set security.user to its owner",
            data_dir.display(),
            meta.uid(),
            a.uid
        );
    }
    // A directory of root's that holds something else than a node's state (`--data-dir .`
    // in root's home, say) is not given away.
    if meta.uid() == 0 && !fresh && !looks_like_a_node(&data_dir) {
        anyhow::bail!(
            "the data dir {} belongs to root and holds files that are not an Outpost node's: \
             not giving them to {name}; choose a new or empty directory",
            data_dir.display()
        );
    }
    for parent in data_dir.ancestors().skip(1) {
        let m = std::fs::metadata(parent).with_context(|| parent.display().to_string())?;
        let mode = m.mode();
        let can = if m.uid() == a.uid {
            mode & 0o100 != 0
        } else if m.gid() == a.gid || groups.contains(&m.gid()) {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !can {
            anyhow::bail!(
                "the service user {name} cannot reach the data dir {}: {} is mode {:o} of uid \
                 {}; choose a data dir it can reach (such as /var/lib/outpost), open the \
                 directory to it, or set security.user",
                data_dir.display(),
                parent.display(),
                mode & 0o7777,
                m.uid()
            );
        }
    }
    chown_tree(&data_dir, a.uid, a.gid)
}

/// Whether `dir` is empty or holds only what a node keeps there.
fn looks_like_a_node(dir: &Path) -> bool {
    const NODE: &[&str] = &[
        "db", "secrets", "tls", "run", "journal", "queue", "ota", "log", "cloud",
    ];
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().all(|e| {
            let name = e.file_name();
            name.to_str()
                .is_some_and(|n| NODE.contains(&n) || n.starts_with('.'))
        })
    })
}

/// Gives everything beneath `root` to `uid:gid`, skipping what is already theirs, without
/// ever following a link: each directory is opened relative to its parent's open handle
/// with `O_NOFOLLOW` and changed through that handle, each other entry changed by name
/// relative to its directory's handle without following it. A file with more than one
/// link (a hard link to something elsewhere) is left alone: the walk cannot be led out of
/// the data dir, even by a process of the service user rearranging it meanwhile.
/// Filesystems mounted inside the data dir (a journal on its own disk) are walked too:
/// only root can mount them.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    use std::os::unix::ffi::OsStrExt as _;
    let (owner, group) = (Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let top = rustix::fs::open(root, dir_flags, Mode::empty())
        .with_context(|| format!("cannot open {}", root.display()))?;
    let mut stack = vec![(top, root.to_path_buf())];
    while let Some((dir, path)) = stack.pop() {
        let st = rustix::fs::fstat(&dir)?;
        if st.st_uid != uid || st.st_gid != gid {
            rustix::fs::fchown(&dir, owner, group)
                .with_context(|| format!("cannot give {} to uid {uid}", path.display()))?;
        }
        for entry in rustix::fs::Dir::read_from(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let shown = path.join(std::ffi::OsStr::from_bytes(name.to_bytes()));
            let st = match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                // Removed meanwhile.
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(e).with_context(|| shown.display().to_string()),
            };
            let kind = rustix::fs::FileType::from_raw_mode(st.st_mode);
            if kind == rustix::fs::FileType::Directory {
                match rustix::fs::openat(&dir, name, dir_flags, Mode::empty()) {
                    Ok(sub) => stack.push((sub, shown)),
                    // Replaced by a link or removed meanwhile: not followed.
                    Err(
                        rustix::io::Errno::LOOP
                        | rustix::io::Errno::NOTDIR
                        | rustix::io::Errno::NOENT,
                    ) => {}
                    Err(e) => return Err(e).with_context(|| shown.display().to_string()),
                }
            } else if (st.st_uid != uid || st.st_gid != gid)
                && (kind != rustix::fs::FileType::RegularFile || st.st_nlink == 1)
            {
                rustix::fs::chownat(&dir, name, owner, group, AtFlags::SYMLINK_NOFOLLOW)
                    .with_context(|| format!("cannot give {} to uid {uid}", shown.display()))?;
            }
        }
    }
    Ok(())
}

/// Empties the capability bounding set, then takes on the user's groups and IDs (real,
/// effective, saved): the kernel clears every capability of a process leaving uid 0.
/// Only the calling thread changes, so no other thread may exist yet.
fn become_user(a: Account, groups: &[u32]) -> anyhow::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count());
    if threads > 1 {
        anyhow::bail!("cannot change user with {threads} threads running");
    }
    for cap in rustix::thread::CapabilitySet::all().iter() {
        // Capabilities this kernel does not know fail with EINVAL: nothing to drop.
        let _ = rustix::thread::remove_capability_from_bounding_set(cap);
    }
    let gids: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
    rustix::thread::set_thread_groups(&gids).context("cannot set the groups")?;
    let gid = Gid::from_raw(a.gid);
    rustix::thread::set_thread_res_gid(gid, gid, gid).context("cannot set the group ID")?;
    let uid = Uid::from_raw(a.uid);
    rustix::thread::set_thread_res_uid(uid, uid, uid).context("cannot set the user ID")?;
    Ok(())
}

/// System calls refused with EPERM: none is made by the node, each is a step an attacker
/// inside a service would want.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const REFUSED: &[i64] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_userfaultfd,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_acct,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_quotactl,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_fanotify_init,
    libc::SYS_syslog,
    libc::SYS_vhangup,
    libc::SYS_kcmp,
    libc::SYS_personality,
    // The newer mount interface.
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_mount_setattr,
    // io_uring does file and socket work beside the filter's view.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// `clone` flags that make new namespaces: refused like `unshare`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const NAMESPACE_FLAGS: &[i32] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

/// Installs the seccomp filter. A service process inherits the supervisor's and adds its
/// own (a filter found in force may be another's: only this one is known to be right).
/// Returns whether a filter is in force.
pub fn filter_syscalls() -> anyhow::Result<bool> {
    install_filter()
}

/// Two filters: the refused calls (and `clone` with a namespace flag) answer EPERM;
/// `clone3`, whose flags a filter cannot see, answers ENOSYS, so the C library falls back
/// to `clone` (as container runtimes' default profiles do).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn install_filter() -> anyhow::Result<bool> {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    };
    let arch = if cfg!(target_arch = "x86_64") {
        seccompiler::TargetArch::x86_64
    } else {
        seccompiler::TargetArch::aarch64
    };
    let mut refused: std::collections::BTreeMap<i64, Vec<SeccompRule>> =
        REFUSED.iter().map(|nr| (*nr, Vec::new())).collect();
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let flag = u64::from(flag.unsigned_abs());
        let set = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .context("cannot build the clone rule")?;
        clone_rules.push(SeccompRule::new(vec![set]).context("cannot build the clone rule")?);
    }
    refused.insert(libc::SYS_clone, clone_rules);
    let filters = [
        (refused, libc::EPERM),
        ([(libc::SYS_clone3, Vec::new())].into(), libc::ENOSYS),
    ];
    for (rules, errno) in filters {
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(errno.unsigned_abs()),
            arch,
        )
        .context("cannot build the system-call filter")?;
        let program: seccompiler::BpfProgram = filter
            .try_into()
            .context("cannot compile the system-call filter")?;
        seccompiler::apply_filter_all_threads(&program).context("cannot install the filter")?;
    }
    Ok(true)
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn install_filter() -> anyhow::Result<bool> {
    Ok(false)
}

/// Opens `path` for reading, then for writing (never creating it), and says how each went:
/// `PATH<TAB>read=ok|denied|missing|...<TAB>write=...`.
pub fn try_open(path: &Path) -> String {
    let outcome = |r: std::io::Result<std::fs::File>| match r {
        Ok(_) => "ok".to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => "denied".into(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "missing".into(),
        Err(e) => e.to_string(),
    };
    let read = outcome(std::fs::File::open(path));
    let write = outcome(std::fs::OpenOptions::new().write(true).open(path));
    format!("{}\tread={read}\twrite={write}", path.display())
}

/// Tries what the system-call filter refuses and what it must let through:
/// `syscalls<TAB>unshare=...<TAB>thread=...` (a new user namespace, which an unprivileged
/// process may otherwise make; a new thread, made with `clone3` or its fallback).
pub fn try_syscalls() -> String {
    // rustix deprecates the safe `unshare` because some flags (files, fs) change what other
    // code of the process assumes; a user namespace, refused here anyway, changes neither.
    #[allow(deprecated)]
    let unshared = rustix::thread::unshare(rustix::thread::UnshareFlags::NEWUSER);
    let unshare = match unshared {
        Ok(()) => "allowed".to_string(),
        Err(e) if e == rustix::io::Errno::PERM => "refused".into(),
        Err(e) => e.to_string(),
    };
    let thread = match std::thread::Builder::new().spawn(|| 1).map(|t| t.join()) {
        Ok(Ok(1)) => "ok".to_string(),
        Ok(_) => "failed".into(),
        Err(e) => e.to_string(),
    };
    format!("syscalls\tunshare={unshare}\tthread={thread}")
}

/// What a service process holds open while it runs so that its sandbox stays right: the
/// connection that made its database's files (SQLite removes the WAL files when the last
/// connection closes, and the sandbox lets the service open only the files that existed
/// when it closed).
pub struct Held {
    _db: Option<outpost_storage::rusqlite::Connection>,
    pub enforced: Enforced,
}

/// Opens what `svc` needs before its sandbox closes (its keys, its database's files, its
/// certificate), then closes the sandbox around them. Must run before the service's
/// runtime starts a thread.
pub fn close(svc: Service, cfg: &NodeConfig, data_dir: &Path, id: &str) -> anyhow::Result<Held> {
    let secrets = data_dir.join("secrets");
    // The keys' protection is settled now (it may talk to a TPM device the sandbox closes).
    outpost_storage::protect::in_force(&secrets)?;
    // The node CA exists (the first service of a node without a supervisor makes it), and
    // its key is sealed if a TPM protects the node: the sandbox lets no service write it.
    let ca = outpost_pki::Paths::new(data_dir);
    outpost_pki::ensure_ca(&ca).context("cannot make the node CA")?;
    if matches!(
        outpost_storage::protect::in_force(&secrets)?,
        outpost_storage::protect::InForce::Tpm(_)
    ) {
        outpost_storage::protect::read(&ca.ca_key)?;
    }
    // Its certificate (the broker's TLS front has one even when the services speak plain
    // text among themselves), made while it may still read the node CA's key.
    if cfg.security.internal_tls || svc.info.is_bus {
        let names = outpost_pki::default_names(&cfg.node.advertise_host, &[]);
        let secs = i64::try_from(cfg.security.service_cert_s).unwrap_or(i64::MAX);
        outpost_pki::internal::ensure_service_cert_lasting(data_dir, id, &names, secs)
            .context("cannot make the service certificate")?;
    }
    let mut files = Files::new(data_dir);
    files.common(outpost_pki::internal::Holder::service_dirs(data_dir, id))?;
    // Under `outpost up` the supervisor renews the services' certificates, and the node
    // CA's key stays out of their reach; a service running alone renews its own.
    let supervised = std::env::var_os(crate::runner::SUPERVISED_ENV).is_some();
    outpost_kit::internal::renew_itself(!supervised);
    if !supervised {
        files.node_ca();
    }
    // The node's internal bus credential: whoever needs it first makes it (the broker, or
    // with an external broker any service), before the sandbox closes.
    if (svc.info.uses_bus || svc.info.is_bus) && cfg.bus.username.is_empty() {
        outpost_storage::load_or_create_token(&secrets, outpost_bus::INTERNAL_SECRET)?;
    }
    files.allow(secrets.join("bus.token"), Access::Read);
    let bus = &cfg.bus;
    for f in [
        &bus.password_file,
        &bus.ca_file,
        &bus.cert_file,
        &bus.key_file,
    ] {
        files.config_file(f.as_deref());
    }
    for f in &cfg.enrollment.manufacturer_ca {
        files.config_file(Some(f));
    }
    let storage = svc.storage(cfg);
    let location = outpost_storage::Location::new(data_dir, svc.name());
    files.set_first_start(storage.is_some() && !location.db.exists());
    svc.sandbox(cfg, &mut files)
        .with_context(|| format!("cannot prepare the files of {}", svc.name()))?;
    if let Some((path, e)) = files.unreadable_config().into_iter().next() {
        anyhow::bail!(
            "cannot read {}, which the configuration names: {e}; the node runs as uid {}: \
             give that user read access to it (chown or chmod)",
            path.display(),
            rustix::process::geteuid().as_raw()
        );
    }
    for path in files.not_followed() {
        tracing::warn!(
            path = %path.display(),
            "this file is in a directory shared with other files: a renewed one is read only after a restart; keep it in a directory of its own"
        );
    }
    let db = match storage {
        Some(_) => {
            let key = outpost_storage::load_or_create_key(&location.secrets, &location.name)?;
            let conn = outpost_storage::open(&location.db, &key, &cfg.storage.open_options())?;
            let key_file = location.secrets.join(format!("{}.key", location.name));
            files.allow(key_file, Access::Read);
            for ext in ["db", "db-wal", "db-shm"] {
                let path = location.db.with_extension(ext);
                // SQLite makes its WAL files on the first write; the sandbox needs them now
                // (empty ones are what SQLite starts from).
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot make {}", path.display()))?;
                files.allow(path, Access::ReadWrite);
            }
            Some(conn)
        }
        None => None,
    };
    let enforced = if cfg.security.sandbox {
        outpost_kit::sandbox::restrict(&files)?
    } else {
        outpost_kit::sandbox::record(Enforced::Off);
        Enforced::Off
    };
    if cfg.security.require_sandbox && !matches!(enforced, Enforced::Full { .. }) {
        anyhow::bail!(
            "the sandbox is required (security.require_sandbox) and is {enforced}: run on a \
             kernel with Landlock (Linux 5.13 or newer, lsm=landlock), or unset \
             require_sandbox"
        );
    }
    Ok(Held { _db: db, enforced })
}
