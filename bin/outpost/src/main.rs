//! `outpost`: the Outpost edge node and its command-line client in one binary.
//!
//! - `outpost up` runs the whole node (see [`supervisor`]);
//! - `outpost run <service>` runs one service (see [`runner`]);
//! - `outpost config default|check` prints or checks the configuration;
//! - the other commands are the client (see [`cli`]).

/// Standard output of the commands, in place of `std`'s: a reader that went away (`outpost
/// services --json | head`) ends the command quietly with success, as Unix tools end,
/// instead of a panic.
macro_rules! println {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(&e);
        }
    }};
}

/// `print!` as [`println!`] above.
macro_rules! print {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            $crate::stdout_failed(&e);
        }
    }};
}

mod cli;
mod config;
mod runner;
mod sandbox;
mod services;
mod session;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{NodeConfig, SERVICES};

/// A duration argument (`30s`, `15m`, `2h`, `7d`, `1h30m`), refused with what is expected.
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|_| {
        format!("'{s}' is not a duration: a number and a unit, as in 30s, 15m, 2h, 7d or 1h30m")
    })
}

/// Standard output could not be written: a closed pipe ends the command quietly; anything
/// else is reported once.
fn stdout_failed(e: &std::io::Error) {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("outpost: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// The names `outpost run` and `outpost probe` take, listed in their help.
fn service_names() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(SERVICES.iter().map(|s| s.name()))
}

/// mimalloc rather than the C library's allocator: request handling allocates and frees
/// many small objects across threads, where glibc's malloc cost the gateway 17 % more CPU
/// per request (bench/RESULTS.md, gateway). Built without transparent huge pages, and the
/// supervisor starts services with freed memory returned to the system at once
/// (`MIMALLOC_PURGE_DELAY=0`), so an idle node stays small; the gateway gets a short delay
/// and its event loops return freed memory every second instead.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "outpost",
    version,
    about = "Outpost: an IoT edge node",
    propagate_version = true
)]
struct Args {
    /// Configuration file (TOML); see `outpost config default`.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "OUTPOST_CONFIG"
    )]
    config: Option<PathBuf>,
    /// Where the node keeps its state.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "OUTPOST_DATA_DIR"
    )]
    data_dir: Option<PathBuf>,
    /// Override one configuration key (repeatable), e.g. `--set core_data.port=59880`;
    /// wins over the file and the environment.
    #[arg(
        long = "set",
        global = true,
        help_heading = "Global options",
        value_name = "SECTION.KEY=VALUE"
    )]
    set: Vec<String>,
    /// The gateway of a remote node (https://HOST:8443); default: this node's own.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "OUTPOST_GATEWAY",
        value_name = "URL"
    )]
    gateway: Option<String>,
    /// The CA certificate (PEM) to trust for the gateway; default: the one stored by
    /// `outpost login`, else (for this node's own gateway) `<data>/tls/ca.pem`.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "OUTPOST_CA",
        value_name = "FILE"
    )]
    ca: Option<PathBuf>,
    /// An API key or access token for the gateway, instead of the `outpost login` session.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "OUTPOST_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole edge node in the foreground (every service, supervised).
    Up,
    /// Run one service in the foreground, as `outpost up` runs each (one container a
    /// service).
    Run {
        /// The service.
        #[arg(value_parser = service_names())]
        service: String,
    },
    /// Check that a service of this host answers (exit status 0), as container health
    /// checks do: `outpost probe core-data`.
    Probe {
        /// The service.
        #[arg(value_parser = service_names())]
        service: String,
    },
    /// Close a service's sandbox around this process exactly as `outpost run` does (user,
    /// system-call filter, Landlock), then try to open each path for reading and for
    /// writing and print what the kernel answered, one line a path.
    #[command(hide = true, name = "sandbox-check")]
    SandboxCheck {
        service: String,
        paths: Vec<PathBuf>,
    },
    /// Print or check the configuration.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Print a shell completion script, e.g. `outpost completions bash >
    /// /etc/bash_completion.d/outpost`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff: `outpost man | man -l -`), or with --out write one page
    /// per command.
    Man {
        /// Directory for outpost.1 and a page per command.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Whether the node runs, its services, the way in (gateway URL, CA, admin password)
    /// and what to try: what `outpost up` said when it started.
    Status {
        /// Print JSON (dataDir, running, servicesUp, servicesNotUp, wayIn) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// The registry's view of the node's services.
    Services {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Device profiles.
    #[command(subcommand)]
    Profile(ProfileCmd),
    /// Devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Device services.
    #[command(subcommand, name = "device-service")]
    DeviceService(DeviceServiceCmd),
    /// Stored readings of a device.
    Readings {
        /// The device.
        #[arg(required_unless_present = "device_flag")]
        device: Option<String>,
        /// The device (as `--device NAME`, the older form).
        #[arg(long = "device", hide = true, conflicts_with = "device")]
        device_flag: Option<String>,
        /// Only this resource's readings.
        #[arg(long)]
        resource: Option<String>,
        /// Only readings newer than this (e.g. 10m, 2h).
        #[arg(long, value_parser = duration)]
        since: Option<Duration>,
        /// Most readings to show (-1: the service's maximum).
        #[arg(long, default_value_t = 20, allow_negative_numbers = true)]
        limit: i64,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Events on the bus.
    #[command(subcommand)]
    Events(EventsCmd),
    /// core-data's retention: its bounds and last run, or a run now.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Log in to the gateway; the session is kept for the next commands.
    Login {
        /// The user name.
        #[arg(long, short = 'u', default_value = "admin")]
        user: String,
        /// Read the password from the first line of stdin instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
    /// End the gateway session (its refresh token is revoked).
    Logout,
    /// Who the CLI is logged in as.
    Whoami {
        /// Print JSON (the API's answer) instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// Users of the gateway (admin).
    #[command(subcommand)]
    User(UserCmd),
    /// API keys for scripts and services (admin).
    #[command(subcommand)]
    Apikey(ApikeyCmd),
    /// The export service: destinations, queues, senders.
    #[command(subcommand)]
    Export(ExportCmd),
    /// Firmware artifacts: signing keys, uploads, listing.
    #[command(subcommand)]
    Ota(OtaCmd),
    /// Notifications: raise them, subscribe receivers (webhook, e-mail, MQTT), follow
    /// their deliveries.
    #[command(subcommand)]
    Notify(cli::support::NotifyCmd),
    /// Scheduled jobs: REST calls, bus messages and device commands on an interval or a
    /// crontab, and the records of their runs.
    #[command(subcommand)]
    Schedule(cli::support::ScheduleCmd),
    /// The node's keys at rest.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// The cloud node: `outpost cloud` runs it; the subcommands manage it.
    Cloud {
        #[command(subcommand)]
        cmd: Option<CloudCmd>,
    },
    /// Read a device (GET) or, given RESOURCE=VALUE pairs, write it (SET), through
    /// core-command: `outpost command t1 Setpoint Setpoint=21.5`. (`--set RESOURCE=VALUE`
    /// is taken too as a value to write; `--set SECTION.KEY=VALUE` stays configuration.)
    #[command(name = "command")]
    Actuate {
        /// The device.
        device: String,
        /// The command: a device command or resource of its profile.
        command: String,
        /// Values to write: RESOURCE=VALUE (repeatable); none means a read.
        #[arg(value_name = "RESOURCE=VALUE")]
        values: Vec<String>,
        /// Also publish the event a read produces (ds-pushevent).
        #[arg(long)]
        push: bool,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Re-encrypt every database, queue and artifact under new keys, with the node stopped
    /// (run it again to finish if it was interrupted).
    Rotate,
}

#[derive(Subcommand)]
enum OtaCmd {
    /// Make an Ed25519 signing key pair (the private key stays off the node).
    Keygen {
        /// Directory for ota-signing.key and ota-signing.pub.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Sign a manifest for FILE into FILE.sig.json, for an upload from the web console.
    #[command(disable_version_flag = true)]
    Sign(cli::ota::Sign),
    /// Sign a manifest for FILE and upload it, streamed, with a progress bar.
    #[command(disable_version_flag = true)]
    Upload(cli::ota::Upload),
    /// The stored artifacts.
    List {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rollouts of artifacts to devices.
    #[command(subcommand)]
    Rollout(RolloutCmd),
}

#[derive(Subcommand)]
// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
enum RolloutCmd {
    /// Roll an artifact out to devices (by name or labels), in phases.
    #[command(disable_version_flag = true)]
    Create(cli::ota::NewRollout),
    /// Phases and per-state counts of one rollout, or of all.
    Status {
        /// The rollout (default: every rollout).
        name: Option<String>,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
        /// Follow the rollout, printing it each time it changes, until it ends (exit
        /// status 0 when it finished, 1 when it failed or was canceled).
        #[arg(long, requires = "name")]
        watch: bool,
    },
    /// Stop offering the update to more devices; those updating go on.
    Pause {
        /// The rollout.
        name: String,
    },
    /// Go on with a paused rollout.
    Resume {
        /// The rollout.
        name: String,
    },
    /// End a rollout: no device starts the update any more.
    Cancel {
        /// The rollout.
        name: String,
    },
}

#[derive(Subcommand)]
enum ExportCmd {
    /// Each destination: queue depth and age, sent, dropped, dead letters, sender state.
    Status {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
        /// Print it again each time it changes (every 2 s at most), until interrupted.
        #[arg(long, short = 'w')]
        watch: bool,
    },
}

/// Where the cloud commands reach the cloud node.
#[derive(clap::Args)]
struct CloudTarget {
    /// The cloud node (default: this machine's, `https://127.0.0.1:<cloud.port>`).
    #[arg(long, env = "OUTPOST_CLOUD", value_name = "URL")]
    url: Option<String>,
    /// Its admin token (default: `<data>/secrets/cloud-admin.token`).
    #[arg(
        long = "admin-token",
        env = "OUTPOST_CLOUD_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
}

#[derive(Subcommand)]
enum CloudCmd {
    /// Run the cloud node in the foreground (what `outpost cloud` alone does).
    Up,
    /// Enroll an edge: writes its identity (client certificate, key, CA, URL) to a file
    /// for the edge's `export.destinations[].identity`.
    Enroll {
        /// The edge's name.
        name: String,
        /// Where to write the identity (default: NAME.identity.json).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        target: CloudTarget,
    },
    /// The fleet: every enrolled edge, when it was last seen and its reported backlog.
    Edges {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: CloudTarget,
    },
    /// Revoke an edge's identity (its data stays).
    Revoke {
        /// The edge.
        name: String,
        #[command(flatten)]
        target: CloudTarget,
    },
    /// Readings the cloud node received from an edge, newest first.
    Readings {
        /// The edge (`outpost cloud edges`).
        #[arg(required_unless_present = "edge_flag")]
        edge: Option<String>,
        /// The edge (as `--edge NAME`, the older form).
        #[arg(long = "edge", hide = true, conflicts_with = "edge")]
        edge_flag: Option<String>,
        /// Only this device's readings.
        #[arg(long)]
        device: Option<String>,
        /// Only this resource's readings.
        #[arg(long)]
        resource: Option<String>,
        /// Most readings to show.
        #[arg(long, default_value_t = 20)]
        limit: u64,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: CloudTarget,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RoleArg {
    Viewer,
    Operator,
    Admin,
}

impl RoleArg {
    fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user; the password is asked for, read from stdin, or generated.
    Add {
        /// The user's name.
        name: String,
        /// What the user may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Read the password from the first line of stdin instead of the terminal.
        #[arg(long, conflicts_with = "generate_password")]
        password_stdin: bool,
        /// Generate a password and print it once.
        #[arg(long)]
        generate_password: bool,
    },
    /// List users.
    List {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user; their tokens stop working at once.
    Rm {
        /// The user.
        name: String,
    },
    /// Set a user's password.
    Password {
        /// The user.
        name: String,
        /// Read the new password from the first line of stdin instead of the terminal.
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum ApikeyCmd {
    /// Create an API key; it is printed once.
    Create {
        /// What the key is for (shown in listings).
        name: String,
        /// What the key may do.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List API keys (never the keys themselves).
    List {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke an API key.
    Revoke {
        /// The key's id (`outpost apikey list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the documented default configuration.
    Default,
    /// Check the configuration (file, environment) and report every problem.
    Check,
}

#[derive(Subcommand)]
enum ProfileCmd {
    /// Create or update a device profile from an EdgeX YAML or JSON file.
    Apply {
        /// The profile file (EdgeX device profile, YAML or JSON).
        #[arg(required_unless_present = "file_flag")]
        file: Option<PathBuf>,
        /// The profile file (as `-f FILE`, kubectl's form).
        #[arg(short = 'f', long = "file", conflicts_with = "file")]
        file_flag: Option<PathBuf>,
        /// Print JSON (the API's answer) instead of a line.
        #[arg(long)]
        json: bool,
    },
    /// List device profiles.
    List {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCmd {
    /// Add a device from flags, or devices from a YAML/JSON file (-f).
    Add(cli::NewDevice),
    /// List devices.
    List {
        /// Only devices of this device service.
        #[arg(long)]
        service: Option<String>,
        /// Only devices of this profile.
        #[arg(long)]
        profile: Option<String>,
        /// Only devices carrying this label.
        #[arg(long)]
        label: Option<String>,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
        /// `wide`: also each device's protocols, autoEvents and last change.
        #[arg(short = 'o', long = "output", value_parser = ["wide"])]
        output: Option<String>,
    },
    /// Show one device.
    Show {
        /// The device.
        name: String,
        /// Print JSON (every field as core-metadata keeps it) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Remove a device.
    Rm {
        /// The device.
        name: String,
    },
    /// Set the secret a device authenticates with (its MQTT password, its device-rest
    /// token); without --secret one is generated and printed once.
    Secret {
        /// The device.
        name: String,
        /// Use this secret (16 to 256 printable characters) instead of a generated one.
        #[arg(long, conflicts_with = "remove")]
        secret: Option<String>,
        /// Remove the secret: the device can no longer connect.
        #[arg(long)]
        remove: bool,
        /// Print JSON ({"device", "secret"}) instead of the secret alone.
        #[arg(long)]
        json: bool,
    },
    /// Enroll a device with its own credential: a new secret and, with --cert, a client
    /// certificate from the node CA (its key made here, never sent). Creates the device
    /// when --profile and --service are given and it does not exist.
    Enroll(cli::enroll::Enroll),
    /// Replace a device's credentials: a new secret, and a new certificate if it has one;
    /// the old ones stop working at once.
    Rotate {
        /// The device.
        name: String,
        /// Write the new device.secret (and certificate) into this directory instead of printing the secret.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Decommission a device: its credentials stop working and it is locked; its history
    /// is kept, and it can be enrolled again.
    Revoke {
        /// The device.
        name: String,
    },
    /// Let in a device that enrolled itself with a manufacturer certificate.
    Approve {
        /// The device.
        name: String,
    },
    /// What devices report about themselves (firmware, hardware, ...), their labels, when
    /// they last checked in with the OTA service and whether they are overdue.
    Inventory {
        /// Only the members of this group...
        #[arg(long)]
        group: Option<String>,
        /// ...or devices carrying all these labels.
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Groups of devices by label selector; a new device with the labels joins at once.
    #[command(subcommand)]
    Group(GroupCmd),
    /// A device's credentials: secret set or not, certificates and their status.
    Credentials {
        /// The device.
        name: String,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run discovery on a device service and list the devices it added.
    Discover {
        /// The device service (device-modbus, device-virtual, ...).
        service: String,
        /// How long to wait for new devices to appear.
        #[arg(long, default_value = "5s", value_parser = duration)]
        wait: std::time::Duration,
        /// Print JSON (`{"service": ..., "added": [device, ...]}`) instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Define a group: the devices carrying all the labels (and of the profile, if given).
    Add {
        /// The group's name.
        name: String,
        /// A label its members carry (repeatable).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Only devices of this profile.
        #[arg(long)]
        profile: Option<String>,
    },
    /// Groups and how many devices each has now.
    List {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// A group's members now.
    Show {
        /// The group.
        name: String,
        /// Print JSON (the API's answer: the group and its members) instead of names.
        #[arg(long)]
        json: bool,
    },
    /// Remove a group (its devices stay).
    Rm {
        /// The group.
        name: String,
    },
}

#[derive(Subcommand)]
enum DeviceServiceCmd {
    /// Register a device service with core-metadata.
    Add {
        /// The device service's name.
        name: String,
        /// Where it serves its API, e.g. https://10.0.0.7:59999.
        #[arg(long)]
        base_address: String,
    },
    /// List device services.
    List {
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Give a device service a secret its devices name (an OPC UA server's user name and
    /// password): device-opcua keeps it in its encrypted database.
    Secret {
        /// The device service, e.g. device-opcua.
        service: String,
        /// The secret's name (a device's SecretName).
        name: String,
        /// KEY=VALUE pairs, e.g. username=operator password=- (a value `-` is read from
        /// standard input, so it stays out of the shell's history).
        #[arg(required = true)]
        pairs: Vec<String>,
    },
}

#[derive(Subcommand)]
enum RetentionCmd {
    /// The bounds, what is stored, and the run under way or the last one.
    Status {
        /// Print JSON (the API's answer) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Run retention now with the configured bounds (or an age of its own) and follow it
    /// to its end with a progress bar.
    Run {
        /// Also remove events older than this (e.g. 7d, 12h), instead of the configured
        /// age.
        #[arg(long, value_parser = duration, value_name = "AGE")]
        older_than: Option<Duration>,
        /// Return once the run started, without following it.
        #[arg(long)]
        no_wait: bool,
        /// Print JSON (the run as the API reports it at the end) instead of a line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum EventsCmd {
    /// Follow device events on the bus.
    Tail {
        /// Only this device's events.
        #[arg(long)]
        device: Option<String>,
        /// Print JSON (the API's answer) instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    outpost_kit::http::install_tls_provider();
    let mut args = Args::parse();
    match &args.command {
        Command::Config(ConfigCmd::Default) => {
            print!("{}", config::DEFAULT_TOML);
            return ExitCode::SUCCESS;
        }
        Command::Completions { shell } => {
            let mut cmd = <Args as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "outpost", &mut out);
            print!("{}", String::from_utf8_lossy(&out));
            return ExitCode::SUCCESS;
        }
        Command::Man { out } => return man(out.as_deref()),
        _ => {}
    }
    // `outpost command ... --set RESOURCE=VALUE` gives values to write; a `--set` naming a
    // configuration key (`SECTION.KEY=VALUE`) is configuration there too.
    let (overrides, settings): (Vec<String>, Vec<String>) = match args.command {
        Command::Actuate { ref values, .. } => {
            let (config, written): (Vec<String>, Vec<String>) = args
                .set
                .iter()
                .cloned()
                .partition(|s| config::is_setting(s));
            (config, [&written[..], values].concat())
        }
        _ => (args.set.clone(), Vec::new()),
    };
    let overrides = &overrides[..];
    // A command for a running node, given no data dir, talks to the node its user started
    // last (else the default data dir's), and reads that node's own configuration when it
    // is given none: ports and addresses as the node has them.
    let serves = matches!(
        args.command,
        Command::Up
            | Command::Run { .. }
            | Command::Probe { .. }
            | Command::SandboxCheck { .. }
            | Command::Config(_)
            | Command::Completions { .. }
            | Command::Man { .. }
            | Command::Keys(_)
            | Command::Cloud { .. }
            | Command::Ota(OtaCmd::Keygen { .. } | OtaCmd::Sign(_))
    );
    let data_dir = match args.data_dir.take() {
        Some(d) => d,
        None if !serves => session::locate_node(config::default_data_dir()),
        None => config::default_data_dir(),
    };
    let given = args.config.take();
    let from_node = match &given {
        None if !serves => session::running_config(&data_dir),
        _ => None,
    };
    let loaded = match (&given, &from_node) {
        (Some(f), _) | (None, Some(f)) => NodeConfig::load(Some(f), overrides),
        (None, None) => NodeConfig::load(None, overrides),
    };
    let loaded = match loaded {
        // The running node's own configuration, unreadable to this binary (another
        // version's): the defaults, with a word.
        Err(e) if from_node.is_some() => {
            eprintln!(
                "outpost: warning: the running node's configuration cannot be read ({e}); \
                 using the defaults (pass --config)"
            );
            NodeConfig::load(None, overrides)
        }
        other => other,
    };
    let cfg = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("outpost: {e}");
            return ExitCode::from(runner::EXIT_CONFIG as u8);
        }
    };
    // How the node's keys are protected, before anything reads one (validated with the rest).
    if let Ok(setting) = cfg.security.tpm_setting() {
        outpost_storage::protect::install(setting);
    }
    match args.command {
        Command::Config(ConfigCmd::Check) => {
            println!("configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Config(ConfigCmd::Default) | Command::Completions { .. } | Command::Man { .. } => {
            ExitCode::SUCCESS
        }
        Command::Run { service } => match services::by_name(&service) {
            Some(svc) => match unprivileged(&cfg, &data_dir) {
                Ok(_) => runner::run(svc, cfg, data_dir),
                Err(code) => code,
            },
            None => {
                let names: Vec<_> = SERVICES.iter().map(|s| s.name()).collect();
                eprintln!(
                    "outpost: unknown service '{service}'; one of: {}",
                    names.join(", ")
                );
                ExitCode::from(runner::EXIT_CONFIG as u8)
            }
        },
        Command::SandboxCheck { service, paths } => match services::by_name(&service) {
            Some(svc) => match unprivileged(&cfg, &data_dir) {
                Ok(_) => {
                    let id = outpost_kit::registry::instance_id(svc.name(), &cfg.node.instance);
                    match sandbox::close(svc, &cfg, &data_dir, &id) {
                        Ok(held) => {
                            println!("sandbox\t{}", held.enforced);
                            for p in &paths {
                                println!("{}", sandbox::try_open(p));
                            }
                            println!("{}", sandbox::try_syscalls());
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            eprintln!("outpost: {e:#}");
                            ExitCode::FAILURE
                        }
                    }
                }
                Err(code) => code,
            },
            None => ExitCode::from(runner::EXIT_CONFIG as u8),
        },
        Command::Probe { service } => match services::by_name(&service) {
            Some(svc) => block_on(async move { cli::node::probe(&cfg, &data_dir, svc).await }),
            None => {
                let names: Vec<_> = SERVICES.iter().map(|s| s.name()).collect();
                eprintln!(
                    "outpost: unknown service '{service}'; one of: {}",
                    names.join(", ")
                );
                ExitCode::from(runner::EXIT_CONFIG as u8)
            }
        },
        Command::Up => match up_unprivileged(&cfg, &data_dir) {
            Ok((run_as, found)) => {
                outpost_kit::telemetry::init_logs(&cfg.log);
                block_on(supervisor::up(cfg, data_dir, run_as, found))
            }
            Err(code) => code,
        },
        Command::Cloud {
            cmd: None | Some(CloudCmd::Up),
        } => match services::by_name(outpost_cloud::SERVICE) {
            // The cloud node is one service with mutual TLS of its own (edges by their
            // certificates from the cloud CA, admins by token): the node-internal scheme
            // of an edge's services is not its.
            Some(cloud) => match unprivileged(&cfg, &data_dir) {
                Ok(_) => {
                    let mut cfg = cfg;
                    cfg.security.internal_tls = false;
                    // As `outpost up`: a cloud node already running, a data dir that
                    // cannot be used, a port in use: said once each, and nothing starts;
                    // the exit status is `up`'s too (1 for a node already running, 2 for
                    // the others: see `supervisor::Refused`).
                    let id = outpost_kit::registry::instance_id(cloud.name(), &cfg.node.instance);
                    let lock = data_dir.join("run").join(format!("{id}.lock"));
                    if session::lock_held(&lock) == Some(true) {
                        eprintln!(
                            "outpost: a cloud node already runs on {} (stop it first, or give \
                             this one another --data-dir)",
                            data_dir.display()
                        );
                        return ExitCode::FAILURE;
                    }
                    if let Err(e) = outpost_storage::ensure_private_dir(&data_dir) {
                        eprintln!("outpost: cannot use the data dir: {e}");
                        return ExitCode::from(runner::EXIT_CONFIG as u8);
                    }
                    let busy = supervisor::busy_sockets(&cfg, [cloud]);
                    if !busy.is_empty() {
                        for line in busy {
                            eprintln!("outpost: {line}");
                        }
                        return ExitCode::from(runner::EXIT_CONFIG as u8);
                    }
                    cloud_banner(&cfg, &data_dir);
                    runner::run(cloud, cfg, data_dir)
                }
                Err(code) => code,
            },
            None => ExitCode::FAILURE,
        },
        // Needs no node: signing keys are made where artifacts are built.
        Command::Ota(OtaCmd::Keygen { out }) => match cli::ota::keygen(&out) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outpost: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ota(OtaCmd::Sign(s)) => block_on(cli::ota::sign(s)),
        Command::Keys(KeysCmd::Rotate) => match cli::keys::rotate(&data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("outpost: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Cloud { cmd: Some(cmd) } => block_on(cloud(cmd, cfg, data_dir, args.ca)),
        Command::Status { json } => block_on(async move {
            let elsewhere = args.gateway.is_some();
            let remote = session::Remote {
                gateway: args.gateway,
                ca: args.ca,
                token: args.token,
            };
            let c = session::Gateway::resolve(&cfg, &data_dir, &remote)
                .map(|g| cli::Client::new(cfg.clone(), g));
            // Boxed: it holds the whole configuration across its awaits.
            Box::pin(cli::node::status(&cfg, &data_dir, elsewhere, c, json)).await
        }),
        command => {
            let remote = session::Remote {
                gateway: args.gateway,
                ca: args.ca,
                token: args.token,
            };
            block_on(client(command, cfg, data_dir, settings, remote))
        }
    }
}

async fn cloud(
    cmd: CloudCmd,
    cfg: NodeConfig,
    data_dir: PathBuf,
    ca: Option<PathBuf>,
) -> anyhow::Result<()> {
    let target = |t: CloudTarget| {
        cli::cloud::Cloud::resolve(&cfg, &data_dir, t.url, ca.clone(), t.admin_token)
    };
    match cmd {
        CloudCmd::Up => Ok(()),
        CloudCmd::Enroll {
            name,
            out,
            target: t,
        } => cli::cloud::enroll(&target(t)?, &name, out).await,
        CloudCmd::Edges { json, target: t } => cli::cloud::edges(&target(t)?, json).await,
        CloudCmd::Revoke { name, target: t } => cli::cloud::revoke(&target(t)?, &name).await,
        CloudCmd::Readings {
            edge,
            edge_flag,
            device,
            resource,
            limit,
            json,
            target: t,
        } => {
            let edge = edge.or(edge_flag).unwrap_or_default();
            cli::cloud::readings(
                &target(t)?,
                &edge,
                device.as_deref(),
                resource.as_deref(),
                limit,
                json,
            )
            .await
        }
    }
}

/// What `outpost cloud` says as it starts: where edges and admins reach it and what to
/// do first.
fn cloud_banner(cfg: &NodeConfig, data_dir: &std::path::Path) {
    let url = cfg.cloud.public_url(&cfg.node.advertise_host);
    eprintln!("Outpost cloud node at {url}");
    eprintln!(
        "  Admin: bearer token in {} (the CLI reads it); the CA to trust: {url}/api/v3/ca.pem",
        data_dir.join("secrets/cloud-admin.token").display()
    );
    eprintln!(
        "  Edges: `outpost cloud enroll NAME` writes NAME.identity.json, the identity of the \
         edge's export destination (kind = \"cloud\")"
    );
    eprintln!("  Try: outpost cloud edges");
}

/// `outpost up`'s start: the node recorded for its user's CLI while still that user (it
/// may become its service user next, which cannot write that user's files), then
/// [`unprivileged`]; with whether a CLI given no `--data-dir` finds the node.
fn up_unprivileged(
    cfg: &NodeConfig,
    data_dir: &std::path::Path,
) -> Result<(sandbox::RunAs, bool), ExitCode> {
    let canonical = |d: &std::path::Path| d.canonicalize().unwrap_or_else(|_| d.to_path_buf());
    let found = session::record_node(data_dir)
        || canonical(data_dir) == canonical(&config::default_data_dir());
    Ok((unprivileged(cfg, data_dir)?, found))
}

/// What `outpost up`, `outpost run` and the cloud node do before anything else: restrict
/// the process, become the service user when started as root, and filter system calls
/// (see [`sandbox`]). A refusal is a configuration error: restarting cannot help.
fn unprivileged(cfg: &NodeConfig, data_dir: &std::path::Path) -> Result<sandbox::RunAs, ExitCode> {
    sandbox::restrict_process();
    let config_error = |e: anyhow::Error| {
        eprintln!("outpost: {e:#}");
        ExitCode::from(runner::EXIT_CONFIG as u8)
    };
    let run_as = sandbox::take_service_user(&cfg.security, data_dir).map_err(config_error)?;
    if cfg.security.sandbox {
        match sandbox::filter_syscalls() {
            Ok(_) => {}
            Err(e) if cfg.security.require_sandbox => return Err(config_error(e)),
            Err(e) => eprintln!("outpost: warning: no system-call filter: {e:#}"),
        }
    }
    if cfg.security.require_sandbox && !run_as.unprivileged() {
        return Err(config_error(anyhow::anyhow!(
            "the sandbox is required (security.require_sandbox) and the node would run as {run_as}"
        )));
    }
    Ok(run_as)
}

/// `outpost man`: the manual page on standard output, or every command's page in a
/// directory.
fn man(out: Option<&std::path::Path>) -> ExitCode {
    let cmd = <Args as clap::CommandFactory>::command();
    let written = match out {
        Some(dir) => std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(cmd, dir))
            .map(|()| println!("manual pages written to {}", dir.display())),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map(|()| print!("{}", String::from_utf8_lossy(&page)))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost: cannot write the manual: {e}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outpost: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outpost: {e:#}");
            if e.chain().any(|c| c.is::<cli::client::NotFound>()) {
                ExitCode::from(cli::client::NotFound::EXIT)
            } else if e.chain().any(|c| c.is::<supervisor::Refused>()) {
                ExitCode::from(runner::EXIT_CONFIG as u8)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn client(
    command: Command,
    cfg: NodeConfig,
    data_dir: PathBuf,
    settings: Vec<String>,
    remote: session::Remote,
) -> anyhow::Result<()> {
    let gateway = session::Gateway::resolve(&cfg, &data_dir, &remote)?;
    if gateway.is_none() && cfg.security.internal_tls {
        // Straight to the services, as the node's administrator.
        anyhow::Context::with_context(outpost_kit::internal::establish_admin(&data_dir), || {
            format!(
                "services use mutual TLS and the administrator's certificate cannot be made \
                 under {}: run on the node, as its user, or go through the gateway",
                data_dir.display()
            )
        })?;
    }
    let c = cli::Client::new(cfg.clone(), gateway);
    match command {
        Command::Services { json } => cli::node::services(&c, json).await,
        Command::Profile(ProfileCmd::Apply {
            file,
            file_flag,
            json,
        }) => {
            let file = file.or(file_flag).unwrap_or_default();
            cli::devices::profile_apply(&c, &file, json).await
        }
        Command::Profile(ProfileCmd::List { json }) => cli::devices::profile_list(&c, json).await,
        Command::Device(DeviceCmd::Add(d)) => cli::devices::device_add(&c, d).await,
        Command::Device(DeviceCmd::List {
            service,
            profile,
            label,
            json,
            output,
        }) => {
            let filter = cli::devices::DeviceFilter {
                service: service.as_deref(),
                profile: profile.as_deref(),
                label: label.as_deref(),
            };
            cli::devices::device_list(&c, filter, json, output.is_some()).await
        }
        Command::Device(DeviceCmd::Show { name, json }) => {
            cli::devices::device_show(&c, &name, json).await
        }
        Command::Device(DeviceCmd::Rm { name }) => cli::devices::device_rm(&c, &name).await,
        Command::Device(DeviceCmd::Secret {
            name,
            secret,
            remove,
            json,
        }) => cli::devices::device_secret(&c, &name, secret, remove, json).await,
        Command::Device(DeviceCmd::Enroll(e)) => cli::enroll::enroll(&c, e).await,
        Command::Device(DeviceCmd::Rotate { name, out }) => {
            cli::enroll::rotate(&c, &name, out.as_deref()).await
        }
        Command::Device(DeviceCmd::Revoke { name }) => cli::enroll::revoke(&c, &name).await,
        Command::Device(DeviceCmd::Approve { name }) => cli::enroll::approve(&c, &name).await,
        Command::Device(DeviceCmd::Inventory {
            group,
            labels,
            json,
        }) => cli::enroll::inventory(&c, group.as_deref(), &labels, json).await,
        Command::Device(DeviceCmd::Group(GroupCmd::Add {
            name,
            labels,
            profile,
        })) => cli::enroll::group_add(&c, &name, &labels, profile.as_deref()).await,
        Command::Device(DeviceCmd::Group(GroupCmd::List { json })) => {
            cli::enroll::group_list(&c, json).await
        }
        Command::Device(DeviceCmd::Group(GroupCmd::Show { name, json })) => {
            cli::enroll::group_show(&c, &name, json).await
        }
        Command::Device(DeviceCmd::Group(GroupCmd::Rm { name })) => {
            cli::enroll::group_rm(&c, &name).await
        }
        Command::Device(DeviceCmd::Credentials { name, json }) => {
            cli::enroll::credentials(&c, &name, json).await
        }
        Command::Device(DeviceCmd::Discover {
            service,
            wait,
            json,
        }) => cli::devices::device_discover(&c, &service, wait, json).await,
        Command::DeviceService(DeviceServiceCmd::Add { name, base_address }) => {
            cli::devices::device_service_add(&c, &name, &base_address).await
        }
        Command::DeviceService(DeviceServiceCmd::List { json }) => {
            cli::devices::device_service_list(&c, json).await
        }
        Command::DeviceService(DeviceServiceCmd::Secret {
            service,
            name,
            pairs,
        }) => cli::devices::device_service_secret(&c, &service, &name, &pairs).await,
        Command::Readings {
            device,
            device_flag,
            resource,
            since,
            limit,
            json,
        } => {
            let device = device.or(device_flag).unwrap_or_default();
            cli::data::readings(&c, &device, resource.as_deref(), since, limit, json).await
        }
        Command::Actuate {
            device,
            command,
            values: _,
            push,
            json,
        } => cli::devices::command(&c, &device, &command, &settings, push, json).await,
        Command::Export(ExportCmd::Status { json, watch }) => {
            cli::cloud::export_status(&c, json, watch).await
        }
        Command::Notify(cmd) => cli::support::notify(&c, cmd).await,
        Command::Schedule(cmd) => cli::support::schedule(&c, cmd).await,
        Command::Ota(OtaCmd::Upload(u)) => cli::ota::upload(&c, u).await,
        Command::Ota(OtaCmd::List { json }) => cli::ota::list(&c, json).await,
        Command::Ota(OtaCmd::Rollout(RolloutCmd::Create(r))) => {
            cli::ota::rollout_create(&c, r).await
        }
        Command::Ota(OtaCmd::Rollout(RolloutCmd::Status { name, json, watch })) => {
            cli::ota::rollout_status(&c, name.as_deref(), json, watch).await
        }
        Command::Ota(OtaCmd::Rollout(RolloutCmd::Pause { name })) => {
            cli::ota::rollout_control(&c, &name, "pause").await
        }
        Command::Ota(OtaCmd::Rollout(RolloutCmd::Resume { name })) => {
            cli::ota::rollout_control(&c, &name, "resume").await
        }
        Command::Ota(OtaCmd::Rollout(RolloutCmd::Cancel { name })) => {
            cli::ota::rollout_control(&c, &name, "cancel").await
        }
        Command::Retention(RetentionCmd::Status { json }) => {
            cli::data::retention_status(&c, json).await
        }
        Command::Retention(RetentionCmd::Run {
            older_than,
            no_wait,
            json,
        }) => cli::data::retention_run(&c, older_than, !no_wait, json).await,
        Command::Events(EventsCmd::Tail { device, json }) => {
            cli::data::events_tail(&cfg, &data_dir, device.as_deref(), json).await
        }
        Command::Login {
            user,
            password_stdin,
        } => cli::users::login(&c, &user, password_stdin).await,
        Command::Logout => cli::users::logout(&c).await,
        Command::Whoami { json } => cli::users::whoami(&c, json).await,
        Command::User(UserCmd::Add {
            name,
            role,
            password_stdin,
            generate_password,
        }) => {
            cli::users::user_add(&c, &name, role.as_str(), password_stdin, generate_password).await
        }
        Command::User(UserCmd::List { json }) => cli::users::user_list(&c, json).await,
        Command::User(UserCmd::Rm { name }) => cli::users::user_rm(&c, &name).await,
        Command::User(UserCmd::Password {
            name,
            password_stdin,
        }) => cli::users::user_password(&c, &name, password_stdin).await,
        Command::Apikey(ApikeyCmd::Create { name, role }) => {
            cli::users::apikey_create(&c, &name, role.as_str()).await
        }
        Command::Apikey(ApikeyCmd::List { json }) => cli::users::apikey_list(&c, json).await,
        Command::Apikey(ApikeyCmd::Revoke { id }) => cli::users::apikey_revoke(&c, &id).await,
        Command::Up
        | Command::Run { .. }
        | Command::SandboxCheck { .. }
        | Command::Probe { .. }
        | Command::Config(_)
        | Command::Completions { .. }
        | Command::Man { .. }
        | Command::Status { .. }
        | Command::Cloud { .. }
        | Command::Ota(OtaCmd::Keygen { .. } | OtaCmd::Sign(_))
        | Command::Keys(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Args;

    /// Every command, option and argument says what it is for: `--help`, the man page and
    /// the shell completions are made from these definitions.
    #[test]
    fn every_command_option_and_argument_is_described() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                // clap's own --help and --version, not options named so.
                let generated = matches!(
                    a.get_action(),
                    clap::ArgAction::Help | clap::ArgAction::Version
                );
                if a.is_hide_set() || generated {
                    continue;
                }
                if a.get_help().is_none() {
                    missing.push(format!("{path} <{id}>"));
                }
            }
            for sub in cmd.get_subcommands() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Args::command(), "outpost", &mut missing);
        assert!(
            missing.is_empty(),
            "without a description:\n{}",
            missing.join("\n")
        );
    }
}
