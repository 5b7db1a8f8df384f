//! Takes the web console, as `npm run build` left it in `web/dist` (with a gzip and a
//! brotli copy of each text file), into the binary: `$OUT_DIR/console.rs` lists every file
//! with its compressed copies. Without a build there (`cargo build` before
//! `scripts/setup.sh`), the list is empty and the gateway says how to build it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let dist = Path::new(&manifest).join("../../web/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    files.sort();
    let mut code =
        String::from("/// The console's files, as built.\npub static FILES: &[File] = &[\n");
    for (rel, abs) in &files {
        let copy = |ext: &str| {
            let p = PathBuf::from(format!("{}.{ext}", abs.display()));
            if p.is_file() {
                format!("Some(include_bytes!({:?}))", p.display().to_string())
            } else {
                "None".to_string()
            }
        };
        let _ = writeln!(
            code,
            "    File {{ path: {rel:?}, raw: include_bytes!({:?}), gzip: {}, brotli: {} }},",
            abs.display().to_string(),
            copy("gz"),
            copy("br")
        );
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    if let Err(e) = std::fs::write(out.join("console.rs"), code) {
        panic!("cannot write the console's file list: {e}");
    }
}

/// Every file under `dir` but the compressed copies: (path relative to `root` with `/`,
/// absolute path).
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            collect(root, &path, out);
            continue;
        }
        let name = path.to_string_lossy();
        if name.ends_with(".gz") || name.ends_with(".br") {
            continue;
        }
        let Ok(abs) = path.canonicalize() else {
            continue;
        };
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        let rel = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        out.push((rel, abs));
    }
}
