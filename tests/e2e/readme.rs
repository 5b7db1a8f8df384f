//! The README's "First ten minutes", run as written on a fresh node, its output checked
//! against what the README shows.
//!
//! The section between `<!-- quick start: tested -->` and `<!-- /quick start -->` is a
//! terminal session: in each `console` block, a line starting with `$ ` is a command and the
//! lines after it are what it prints. `[..]` in a line stands for any text, and a line `...`
//! for any number of lines. The commands run one after another in one bash, as root, in a
//! mount, network and PID namespace of their own: the node gets the default data dir
//! (`/var/lib/outpost`, a tmpfs there) and the default ports without touching the machine's.
//! Two things stand in for the build: `target/release/outpost` and `outpost-agent` in the
//! working directory are this build's binaries, and `scripts/up.sh ARGS` (which installs,
//! builds and runs `target/release/outpost ARGS up` in the foreground) starts that node in
//! the background, after stopping the one before, and its banner is checked once the node
//! says it is up. pip installs from the wheels `scripts/setup.sh --test` downloaded
//! (`PIP_NO_INDEX`, `PIP_FIND_LINKS`), as from a mirror. A reading command (`readings`, a
//! command without values to write, `status`, `rollout status`) is run again until its
//! output matches, as a person would look again a moment later.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{BIN, needs_root};

const README: &str = include_str!("../../README.md");
const AGENT: &str = env!("CARGO_BIN_EXE_outpost-agent");
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// One command of the session and what the README says it prints.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
}

/// The tested section's commands, in order.
fn quick_start() -> Vec<Step> {
    let start = README
        .find("<!-- quick start: tested -->")
        .expect("README has a tested quick start");
    let end = README[start..]
        .find("<!-- /quick start -->")
        .expect("the quick start ends")
        + start;
    let mut steps: Vec<Step> = Vec::new();
    let mut in_block = false;
    let mut continued = false;
    for line in README[start..end].lines() {
        if line.starts_with("```") {
            in_block = !in_block && line == "```console";
            continued = false;
            continue;
        }
        if !in_block {
            continue;
        }
        if continued {
            let step = steps.last_mut().expect("a command to continue");
            step.command.push('\n');
            step.command.push_str(line);
            continued = line.ends_with('\\');
        } else if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                command: command.to_string(),
                expected: Vec::new(),
            });
            continued = command.ends_with('\\');
        } else {
            steps
                .last_mut()
                .expect("output after a command")
                .expected
                .push(line.to_string());
        }
    }
    steps
}

/// Whether `line` matches `pattern`, where `[..]` stands for any text.
fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("[..]").collect();
    let (first, rest) = parts.split_first().expect("split yields one part");
    let Some(mut tail) = line.strip_prefix(first) else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return tail.is_empty();
    };
    for part in middle {
        match tail.find(part) {
            Some(i) => tail = &tail[i + part.len()..],
            None => return false,
        }
    }
    tail.len() >= last.len() && tail.ends_with(last)
}

/// Whether `lines` match `expected`, where a line `...` stands for any number of lines.
fn output_matches(expected: &[String], lines: &[&str]) -> bool {
    match expected.split_first() {
        None => lines.is_empty(),
        Some((p, rest)) if p == "..." => {
            (0..=lines.len()).any(|skip| output_matches(rest, &lines[skip..]))
        }
        Some((p, rest)) => lines
            .split_first()
            .is_some_and(|(l, more)| line_matches(p, l) && output_matches(rest, more)),
    }
}

/// A bash reading commands from the test, in namespaces of its own.
struct Session {
    /// Killed when the session ends (and with it the namespaces and all in them).
    _unshare: crate::support::Spawned,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
    transcript: String,
}

impl Session {
    fn start(dir: &Path) -> Self {
        // Everything in the PID namespace dies with its first process, bash, which dies
        // with unshare (--kill-child): no node outlives a failed test.
        let mut child = Command::new("unshare")
            .args([
                "--mount",
                "--net",
                "--pid",
                "--fork",
                "--kill-child",
                "--mount-proc",
            ])
            .args(["bash", "--noprofile", "--norc"])
            .current_dir(dir.join("work"))
            .env("HOME", dir.join("home"))
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("OUTPOST_DATA_DIR")
            .env_remove("OUTPOST_CONFIG")
            .env("PIP_NO_INDEX", "1")
            .env(
                "PIP_FIND_LINKS",
                Path::new(REPO).join("target/peers/wheels"),
            )
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
            // The banner is checked against the README's "up in [..] ms". While the whole
            // suite loads both cores a service can take longer than the default 30 s to
            // answer; a newcomer's idle machine does not.
            .env("OUTPOST_SUPERVISOR__READY_TIMEOUT_MS", "120000")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare");
        let stdin = child.stdin.take().expect("stdin");
        let lines = crate::support::line_channel(child.stdout.take().expect("stdout"));
        Self {
            _unshare: crate::support::Spawned(child),
            stdin,
            lines,
            transcript: String::new(),
        }
    }

    /// Runs `command` (standard error with standard output); its output lines and exit
    /// status.
    fn run(&mut self, command: &str) -> (Vec<String>, i32) {
        writeln!(
            self.stdin,
            "{{\n{command}\n}} < /dev/null 2>&1; echo \"@@@rc=$?\""
        )
        .expect("send");
        self.stdin.flush().expect("flush");
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    // The mark follows the output at once: after the last line's end, or
                    // after output that ends without one.
                    if let Some((last, rc)) = line.split_once("@@@rc=") {
                        if !last.is_empty() {
                            out.push(last.to_string());
                        }
                        let rc = rc.parse().expect("exit status");
                        self.transcript
                            .push_str(&format!("$ {command}\n{}\n[exit {rc}]\n", out.join("\n")));
                        return (out, rc);
                    }
                    out.push(line);
                }
                Err(_) => panic!(
                    "`{command}` did not finish in 180 s; so far:\n{}\n{}",
                    out.join("\n"),
                    self.transcript
                ),
            }
        }
    }

    /// Runs `command`, which must succeed and print nothing.
    fn quiet(&mut self, command: &str) {
        let (out, rc) = self.run(command);
        assert!(rc == 0 && out.is_empty(), "`{command}`: exit {rc}\n{out:?}");
    }
}

/// A directory made as a mount point, removed when dropped if it is empty then.
struct MountPoint(&'static str);

impl Drop for MountPoint {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.0);
    }
}

/// What `scripts/up.sh ARGS` runs, or `None` for any other command.
fn up_args(command: &str) -> Option<&str> {
    command
        .strip_prefix("scripts/up.sh")
        .filter(|rest| rest.is_empty() || rest.starts_with(' '))
}

/// Whether a command only reads: it may be run again until the node has caught up.
fn reads(command: &str) -> bool {
    [
        "outpost readings ",
        "outpost status",
        "outpost ota rollout status ",
    ]
    .iter()
    .any(|p| command.starts_with(p))
        || (command.starts_with("outpost command ") && !command.contains('='))
}

#[test]
fn the_readmes_first_ten_minutes_run_as_written() {
    needs_root("namespaces of its own, the default data dir and ports");
    let steps = quick_start();
    assert!(steps.len() > 10, "{steps:?}");
    let wheels = Path::new(REPO).join("target/peers/wheels");
    assert!(
        wheels.is_dir(),
        "{} is missing: run scripts/setup.sh --test",
        wheels.display()
    );
    let dir = crate::support::tempdir();
    let work = dir.path().join("work");
    let release = work.join("target/release");
    std::fs::create_dir_all(&release).expect("mkdir");
    std::fs::create_dir_all(dir.path().join("home")).expect("mkdir");
    for (link, to) in [
        (release.join("outpost"), PathBuf::from(BIN)),
        (release.join("outpost-agent"), PathBuf::from(AGENT)),
        (work.join("examples"), Path::new(REPO).join("examples")),
        (work.join("tests"), Path::new(REPO).join("tests")),
    ] {
        std::os::unix::fs::symlink(to, link).expect("symlink");
    }
    // Mount points for the node's tmpfs data dir and its record: covered in the
    // namespace; those made here are removed again (empty) when the test ends.
    let _made: Vec<MountPoint> = ["/var/lib/outpost", "/run/outpost"]
        .into_iter()
        .filter(|d| !Path::new(d).exists())
        .map(|d| {
            std::fs::create_dir_all(d).expect("mount point");
            MountPoint(d)
        })
        .collect();

    let mut sh = Session::start(dir.path());
    sh.quiet("ip link set lo up");
    sh.quiet("mount -t tmpfs -o mode=0755 tmpfs /var/lib/outpost");
    sh.quiet("mount -t tmpfs -o mode=0755 tmpfs /run/outpost");
    let logs = dir.path().display().to_string();
    let mut node_started = 0;
    for step in &steps {
        if let Some(args) = up_args(&step.command) {
            if node_started > 0 {
                sh.quiet("kill -INT $NODE; wait $NODE");
            }
            node_started += 1;
            let out = format!("{logs}/up-{node_started}.out");
            sh.quiet(&format!(
                "target/release/outpost{args} up > {out} 2> {logs}/up-{node_started}.log & NODE=$!"
            ));
            let deadline = Instant::now() + Duration::from_secs(60);
            let banner = loop {
                let banner = std::fs::read_to_string(&out).unwrap_or_default();
                if banner.contains("Stop with Ctrl-C.") {
                    break banner;
                }
                let (running, _) = sh.run("kill -0 $NODE && echo running");
                assert!(
                    running == ["running"] && Instant::now() < deadline,
                    "the node did not come up:\n{banner}\n{}",
                    std::fs::read_to_string(format!("{logs}/up-{node_started}.log"))
                        .unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(200));
            };
            let lines: Vec<&str> = banner.lines().collect();
            assert!(
                output_matches(&step.expected, &lines),
                "$ {}\nprinted:\n{banner}\nthe README shows:\n{}",
                step.command,
                step.expected.join("\n")
            );
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (out, rc) = sh.run(&step.command);
            let lines: Vec<&str> = out.iter().map(String::as_str).collect();
            if rc == 0 && output_matches(&step.expected, &lines) {
                break;
            }
            assert!(
                reads(&step.command) && Instant::now() < deadline,
                "$ {}\nprinted (exit {rc}):\n{}\nthe README shows:\n{}\n\nthe session so \
                 far:\n{}\n\nthe node's log:\n{}",
                step.command,
                out.join("\n"),
                step.expected.join("\n"),
                sh.transcript,
                std::fs::read_to_string(format!("{logs}/up-{node_started}.log"))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    assert!(node_started > 0, "the quick start starts a node");
    if let Some(path) = std::env::var_os("OUTPOST_README_TRANSCRIPT") {
        std::fs::write(path, &sh.transcript).expect("transcript");
    }
    // The node stops cleanly at the end, as Ctrl-C stops it.
    sh.quiet("kill -INT $NODE; wait $NODE");
}

#[test]
fn readme_patterns_match_as_documented() {
    assert!(line_matches("up in [..] ms", "up in 134 ms"));
    assert!(!line_matches("up in [..] ms", "up in 134 s"));
    assert!(line_matches("[..]", ""));
    assert!(line_matches("a[..]b[..]c", "a-x-b-y-c"));
    assert!(!line_matches("a[..]b[..]c", "a-x-c"));
    assert!(!line_matches("abc", "abcd"));
    let lines = ["one", "two", "three"];
    let ex = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(output_matches(&ex(&["...", "three"]), &lines));
    assert!(output_matches(&ex(&["one", "...", "three"]), &lines));
    assert!(output_matches(&ex(&["one", "..."]), &lines));
    assert!(!output_matches(&ex(&["one", "three"]), &lines));
    assert!(!output_matches(&ex(&[]), &lines));
    assert!(output_matches(&ex(&["..."]), &[]));
}
