//! The filesystem sandbox a service process closes around itself (Landlock), before its
//! runtime starts any thread.
//!
//! A service declares what it touches on disk ([`crate::Service::sandbox`]) and the runner
//! adds what every service needs ([`Files::common`]); [`restrict`] then lets the process
//! open nothing else. Landlock applies to the calling thread and the threads it starts
//! later, so the rules must be in force before the first thread: the files a rule names
//! must therefore exist by then, and the declaring code makes them (a key it would create
//! on first use is created while the sandbox is still open).
//!
//! What a rule gives ([`Access`]):
//! - [`Access::Read`] and [`Access::ReadExec`]: read files and list directories beneath;
//! - [`Access::ReadWrite`]: read and write one existing file (a database file), but create,
//!   rename or remove nothing;
//! - [`Access::Own`]: everything beneath (a directory only the service uses: the broker's
//!   journal, export's queues).
//!
//! Outside these rules a service can open nothing: not another service's database or keys,
//! not the data dir's other files, not the rest of the filesystem. Changing permissions,
//! signals and sockets are outside Landlock's scope (the service user, `no_new_privs`, no
//! capabilities and the seccomp filter cover those).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use outpost_storage::StorageError;

use landlock::{
    ABI, Access as _, AccessFs, BitFlags, Compatible as _, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus,
};

/// What a rule allows beneath its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read files and list directories.
    Read,
    /// Read, list and execute (the binary, system libraries).
    ReadExec,
    /// Read and write an existing file, truncating it included.
    ReadWrite,
    /// Read, write and control devices beneath (`/dev` for serial lines).
    Device,
    /// Everything: create, write, rename and remove files and directories beneath.
    Own,
}

/// The newest Landlock ABI whose rights are asked for; older kernels enforce what they
/// know (best effort) and the status says so.
const ABI_WANTED: ABI = ABI::V5;

/// The paths a service may use, as rules to enforce.
#[derive(Debug, Clone)]
pub struct Files {
    data_dir: PathBuf,
    rules: Vec<(PathBuf, Access)>,
    configured: Vec<PathBuf>,
    /// See [`Files::not_followed`].
    not_followed: Vec<PathBuf>,
    first_start: bool,
}

impl Files {
    /// No rule yet, for a service keeping its state in `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            rules: Vec::new(),
            configured: Vec::new(),
            not_followed: Vec::new(),
            first_start: false,
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The service's secrets directory (`<data>/secrets`).
    pub fn secrets_dir(&self) -> PathBuf {
        self.data_dir.join("secrets")
    }

    /// Whether the service has never run on this data dir (its database does not exist
    /// yet), as the runner found before declaring.
    pub fn first_start(&self) -> bool {
        self.first_start
    }

    pub fn set_first_start(&mut self, first: bool) {
        self.first_start = first;
    }

    /// Allows `access` beneath `path`. A path that does not exist when the sandbox closes
    /// is left out (nothing may be opened there).
    pub fn allow(&mut self, path: impl Into<PathBuf>, access: Access) -> &mut Self {
        self.rules.push((path.into(), access));
        self
    }

    /// A configured file outside the data dir (a CA, a certificate), read-only; nothing
    /// when unset.
    pub fn config_file(&mut self, path: Option<&Path>) -> &mut Self {
        if let Some(p) = path {
            self.allow(p, Access::Read);
            self.configured.push(p.to_path_buf());
        }
        self
    }

    /// A configured file that is replaced while the service runs (an operator's TLS
    /// certificate and key, renewed by their tools), read-only. A rule on the file alone
    /// follows its first inode and refuses every later version, so its directory is
    /// allowed, and the directory of the file it resolves to (a link moved to a new file),
    /// when that directory can be the file's own: not a directory the system or other
    /// programs share (`/`, `/etc`, `/tmp`, ...), nor one holding the data dir or inside
    /// it. Elsewhere only the file is allowed, and [`Files::not_followed`] says so.
    pub fn replaced_config_file(&mut self, path: Option<&Path>) -> &mut Self {
        let Some(p) = path else {
            return self;
        };
        self.configured.push(p.to_path_buf());
        let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let real = std::fs::canonicalize(p).ok();
        let mut followed = true;
        for file in std::iter::once(absolute).chain(real) {
            match file
                .parent()
                .filter(|dir| self.may_hold_replaced_files(dir))
            {
                Some(dir) => {
                    self.allow(dir.to_path_buf(), Access::Read);
                }
                None => {
                    followed = false;
                    self.allow(file, Access::Read);
                }
            }
        }
        if !followed {
            self.not_followed.push(p.to_path_buf());
        }
        self
    }

    /// Whether `dir` may be opened whole for the files replaced in it: a directory of their
    /// own, not one the system or other programs share, nor one holding the data dir or
    /// inside it.
    fn may_hold_replaced_files(&self, dir: &Path) -> bool {
        const SHARED: &[&str] = &[
            "/",
            "/etc",
            "/etc/ssl",
            "/etc/ssl/private",
            "/etc/ssl/certs",
            "/tmp",
            "/var",
            "/var/tmp",
            "/var/lib",
            "/run",
            "/home",
            "/root",
            "/usr",
            "/opt",
            "/srv",
            "/mnt",
        ];
        dir.is_absolute()
            && !SHARED.iter().any(|s| dir == Path::new(s))
            && !self.data_dir.starts_with(dir)
            && !dir.starts_with(&self.data_dir)
    }

    /// Replaced files of [`Files::replaced_config_file`] in a shared directory: only the
    /// file as it was at start is allowed, so a renewed one is read after a restart.
    pub fn not_followed(&self) -> &[PathBuf] {
        &self.not_followed
    }

    /// The configured files this process may not read (a file an operator made as root
    /// for a node that runs as its own user), with why.
    pub fn unreadable_config(&self) -> Vec<(PathBuf, std::io::Error)> {
        self.configured
            .iter()
            .filter_map(|p| {
                let opened = if p.is_dir() {
                    std::fs::read_dir(p).map(drop)
                } else {
                    std::fs::File::open(p).map(drop)
                };
                match opened {
                    Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                        Some((p.clone(), e))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// A directory of the data dir only this service uses (`journal`, `queue`): made if
    /// missing (mode 0700), and everything beneath it allowed.
    pub fn own_dir(&mut self, relative: &str) -> Result<PathBuf, outpost_storage::StorageError> {
        let dir = self.data_dir.join(relative);
        outpost_storage::ensure_private_dir(&dir)?;
        self.allow(dir.clone(), Access::Own);
        Ok(dir)
    }

    /// The key `<data>/secrets/<name>`, created now if missing (sealed by the TPM when one
    /// protects the node), read-only from then on.
    pub fn secret(&mut self, name: &str) -> Result<(), outpost_storage::StorageError> {
        let path = self.secrets_dir().join(name);
        outpost_storage::load_or_create_secret(&path)?;
        self.allow(path, Access::Read);
        Ok(())
    }

    /// The node CA's key, for a service that issues certificates (device certificates,
    /// the gateway's, its own when no supervisor renews it).
    pub fn node_ca(&mut self) -> &mut Self {
        let secrets = self.secrets_dir();
        self.allow(secrets.join("node-ca.key"), Access::Read)
            .allow(secrets.join("node-ca.lock"), Access::ReadWrite)
    }

    /// What every service of the node needs: the system's libraries, what of `/etc` name
    /// resolution and TLS read, the running binary, `/proc` and `/sys` read-only; from the
    /// data dir the certificates
    /// (public), its configuration snapshot, the TPM-sealed key, and its own certificate's
    /// directories (`service_dirs`, made here).
    pub fn common(
        &mut self,
        service_dirs: (PathBuf, PathBuf),
    ) -> Result<&mut Self, outpost_storage::StorageError> {
        for dir in ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"] {
            self.system(dir, Access::ReadExec);
        }
        for dir in ["/proc", "/sys"] {
            self.system(dir, Access::Read);
        }
        // Of /etc, what name resolution, TLS roots and time zones read; not the rest (other
        // programs' configuration, credentials).
        for etc in [
            "/etc/resolv.conf",
            "/etc/hosts",
            "/etc/host.conf",
            "/etc/nsswitch.conf",
            "/etc/gai.conf",
            "/etc/services",
            "/etc/protocols",
            "/etc/localtime",
            "/etc/ld.so.cache",
            "/etc/ssl/certs",
            "/etc/ca-certificates",
            "/etc/pki/tls/certs",
        ] {
            self.system(etc, Access::Read);
            // Often a link (resolv.conf into /run, localtime into /usr/share/zoneinfo).
            if let Ok(target) = std::fs::canonicalize(etc)
                && target != Path::new(etc)
            {
                self.system(target, Access::Read);
            }
        }
        for dev in ["/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"] {
            self.allow(dev, Access::ReadWrite);
        }
        if let Ok(exe) = std::fs::canonicalize("/proc/self/exe") {
            self.allow(exe, Access::ReadExec);
        }
        let d = self.data_dir.clone();
        let (public, private) = service_dirs;
        outpost_storage::ensure_private_dir(&public)?;
        outpost_storage::ensure_private_dir(&private)?;
        // Not the configuration snapshot: it was read at start, and holds every service's
        // settings.
        Ok(self
            .allow(d.join("tls"), Access::Read)
            .allow(d.join("secrets").join("tpm.sealed"), Access::Read)
            .allow(public, Access::Own)
            .allow(private, Access::Own))
    }

    /// A system path, unless the data dir lies beneath it (the rule would open the data
    /// dir too).
    fn system(&mut self, path: impl Into<PathBuf>, access: Access) {
        let path = path.into();
        if !self.data_dir.starts_with(&path) {
            self.allow(path, access);
        }
    }

    /// The rules, for logs and tests.
    pub fn rules(&self) -> &[(PathBuf, Access)] {
        &self.rules
    }
}

/// How far the sandbox closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforced {
    /// Every rule is enforced by the kernel (its Landlock ABI).
    Full { abi: u8 },
    /// The kernel enforces part of the rules (an older Landlock ABI).
    Partial { abi: u8 },
    /// The kernel has no Landlock (or it is disabled): nothing is enforced.
    Unsupported,
    /// The sandbox is turned off (`security.sandbox = false`).
    Off,
}

impl std::fmt::Display for Enforced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Full { abi } => write!(f, "Landlock (ABI {abi}) enforced"),
            Self::Partial { abi } => write!(
                f,
                "Landlock only partly enforced: the kernel has ABI {abi}, the sandbox asks for {}",
                ABI_WANTED as u8
            ),
            Self::Unsupported => f.write_str(
                "NOT enforced: the kernel has no Landlock (Linux 5.13 or newer with \
                 lsm=landlock)",
            ),
            Self::Off => f.write_str("NOT enforced: security.sandbox is off"),
        }
    }
}

/// Why the sandbox could not close.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the sandbox cannot be built: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("the sandbox must close before any thread starts, and {0} threads run")]
    Threads(usize),
}

/// Enforces `files` on this process (which must have one thread: later threads inherit
/// the rules) and remembers the outcome for [`status`].
pub fn restrict(files: &Files) -> Result<Enforced, SandboxError> {
    let threads = thread_count();
    if threads > 1 {
        return Err(SandboxError::Threads(threads));
    }
    let mut ruleset = Ruleset::default()
        .handle_access(AccessFs::from_all(ABI_WANTED))?
        .create()?;
    for (path, access) in &files.rules {
        // A missing path gets no rule: nothing may be opened there.
        let Ok(fd) = PathFd::new(path) else {
            continue;
        };
        let mut rights = rights(*access);
        if !path.is_dir() {
            rights &= AccessFs::from_file(ABI_WANTED);
        }
        ruleset = ruleset.add_rule(PathBeneath::new(fd, rights))?;
    }
    let status = ruleset.restrict_self()?;
    let abi = match status.landlock {
        landlock::LandlockStatus::Available { effective_abi, .. } => effective_abi as u8,
        _ => 0,
    };
    let enforced = match status.ruleset {
        RulesetStatus::FullyEnforced => Enforced::Full { abi },
        RulesetStatus::PartiallyEnforced => Enforced::Partial { abi },
        RulesetStatus::NotEnforced => Enforced::Unsupported,
    };
    record(enforced.clone());
    Ok(enforced)
}

fn rights(access: Access) -> BitFlags<AccessFs> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    match access {
        Access::Read => read,
        Access::ReadExec => AccessFs::from_read(ABI_WANTED),
        Access::ReadWrite => read | AccessFs::WriteFile | AccessFs::Truncate,
        Access::Device => read | AccessFs::WriteFile | AccessFs::IoctlDev,
        Access::Own => AccessFs::from_all(ABI_WANTED),
    }
}

/// Whether the kernel has Landlock at all (any ABI: older ones enforce part of the rules).
pub fn kernel_has_landlock() -> bool {
    Ruleset::default()
        .set_compatibility(landlock::CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .and_then(|r| r.create())
        .is_ok()
}

/// Whether the kernel enforces every right the sandbox asks for (Landlock with the ABI
/// this module is written for, or newer).
pub fn kernel_supports() -> bool {
    Ruleset::default()
        .set_compatibility(landlock::CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI_WANTED))
        .and_then(|r| r.create())
        .is_ok()
}

/// Threads of this process.
fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count())
}

static STATUS: OnceLock<Enforced> = OnceLock::new();

/// Records how far the sandbox closed (also when it was not tried).
pub fn record(enforced: Enforced) {
    let _ = STATUS.set(enforced);
}

/// How far this process's sandbox closed, once [`restrict`] or [`record`] ran.
pub fn status() -> Option<&'static Enforced> {
    STATUS.get()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules [`Files::replaced_config_file`] makes for `file`, with the data dir at
    /// `/var/lib/outpost`.
    fn rules_for(file: &str) -> (Vec<PathBuf>, bool) {
        let mut files = Files::new(Path::new("/var/lib/outpost"));
        files.replaced_config_file(Some(Path::new(file)));
        let paths = files.rules().iter().map(|(p, _)| p.clone()).collect();
        (paths, files.not_followed().is_empty())
    }

    #[test]
    fn a_replaced_file_opens_its_own_directory_but_never_a_shared_one() {
        // A directory of its own: opened, so a renewed file renamed into it is read.
        let (paths, followed) = rules_for("/etc/outpost/tls/gateway.pem");
        assert!(followed);
        assert!(
            paths.contains(&PathBuf::from("/etc/outpost/tls")),
            "{paths:?}"
        );
        // Shared directories, the data dir and what holds it: the file alone, said.
        for file in [
            "/etc/gateway.pem",
            "/etc/ssl/private/gateway.key",
            "/tmp/edge.identity.json",
            "/gateway.pem",
            "/var/lib/outpost/gateway.pem",
            "/var/lib/outpost/tls/gateway.pem",
            "/var/lib/gateway.pem",
        ] {
            let (paths, followed) = rules_for(file);
            assert!(!followed, "{file}");
            assert_eq!(paths, vec![PathBuf::from(file)], "{file}");
        }
    }
}
