//! Keys sealed by a real TPM 2.0 (swtpm): they open with that TPM only, a plain key file is
//! sealed in place, and a TPM that clients left full is still usable.

use outpost_storage::protect::{self, InForce, Setting};
use outpost_storage::tpm::{Sealed, Tcti, Tpm};
use outpost_testkit::tpm::Swtpm;

fn tcti(tpm: &Swtpm) -> Tcti {
    Tcti::parse(&tpm.tcti()).expect("swtpm's TCTI")
}

#[test]
fn a_sealed_secret_unseals_on_its_tpm_only() {
    let (a, b) = (Swtpm::start(), Swtpm::start());
    let secret = [7u8; 32];
    let sealed = Tpm::open(&tcti(&a)).unwrap().seal(&secret).unwrap();
    assert!(!sealed.private.windows(32).any(|w| w == secret));
    assert_eq!(
        Tpm::open(&tcti(&a)).unwrap().unseal(&sealed).unwrap(),
        secret
    );
    let e = Tpm::open(&tcti(&b)).unwrap().unseal(&sealed).unwrap_err();
    assert!(e.is_foreign_object(), "{e}");
    // Every object loaded was flushed again: the TPM holds no transient object.
    let left = a.tool("tpm2_getcap", &["handles-transient"]);
    assert!(left.trim().is_empty(), "left behind: {left}");
}

#[test]
fn objects_left_by_a_client_that_died_do_not_lock_the_tpm() {
    let tpm = Swtpm::start();
    // swtpm has three transient slots; tpm2-tools leaves the primaries it creates loaded.
    // Two left behind leave room for the storage key but not for the sealed object too;
    // three, for nothing.
    let ctx = tempfile::tempdir().unwrap();
    let leave = |n: std::ops::Range<usize>| {
        for i in n {
            let path = ctx.path().join(format!("{i}.ctx"));
            tpm.tool(
                "tpm2_createprimary",
                &["-C", "o", "-G", "ecc", "-c", path.to_str().unwrap()],
            );
        }
    };
    let held = || tpm.tool("tpm2_getcap", &["handles-transient"]);
    leave(0..2);
    assert_eq!(held().lines().count(), 2, "{}", held());
    let sealed = Tpm::open(&tcti(&tpm)).unwrap().seal(b"x").unwrap();
    leave(2..5);
    assert_eq!(held().lines().count(), 3, "{}", held());
    assert_eq!(
        Tpm::open(&tcti(&tpm)).unwrap().unseal(&sealed).unwrap(),
        b"x"
    );
    leave(5..7);
    let sealed = Tpm::open(&tcti(&tpm)).unwrap().seal(b"y").unwrap();
    assert_eq!(
        Tpm::open(&tcti(&tpm)).unwrap().unseal(&sealed).unwrap(),
        b"y"
    );
}

/// One test for the process-wide setting (installed once per process).
#[test]
fn the_node_keys_are_sealed_and_open_only_with_their_tpm() {
    let tpm = Swtpm::start();
    protect::install(Setting::Tpm(tcti(&tpm)));
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    // A key file from before the TPM: plain, as nodes without one keep them.
    std::fs::create_dir_all(&secrets).unwrap();
    let old = secrets.join("old.key");
    outpost_storage::write_secret_file(&old, hex::encode([3u8; 32]).as_bytes()).unwrap();

    let key_file = secrets.join("core-data.key");
    let key = outpost_storage::load_or_create_secret(&key_file).unwrap();
    assert!(protect::is_sealed(&key_file));
    assert!(secrets.join(protect::SEALED_FILE).exists());
    assert_eq!(
        protect::in_force(&secrets).unwrap(),
        InForce::Tpm(tcti(&tpm))
    );
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert!(
        !text.contains(&hex::encode(key)),
        "the key in clear: {text}"
    );
    assert_eq!(outpost_storage::read_secret(&key_file).unwrap(), key);
    // The plain file is sealed in place the first time it is read.
    assert_eq!(outpost_storage::read_secret(&old).unwrap(), [3u8; 32]);
    assert!(protect::is_sealed(&old));
    assert_eq!(outpost_storage::read_secret(&old).unwrap(), [3u8; 32]);
    // Tokens stay plain: local tools read them.
    let token = outpost_storage::load_or_create_token(&secrets, "bus").unwrap();
    assert_eq!(
        std::fs::read_to_string(secrets.join("bus.token")).unwrap(),
        token
    );

    // The same directory copied to a node with another TPM does not open there.
    let copy = tempfile::tempdir().unwrap();
    let copied = copy.path().join("secrets");
    std::fs::create_dir_all(&copied).unwrap();
    for f in std::fs::read_dir(&secrets).unwrap() {
        let f = f.unwrap();
        let to = copied.join(f.file_name());
        outpost_storage::write_secret_file(&to, &std::fs::read(f.path()).unwrap()).unwrap();
    }
    let other = Swtpm::start();
    let sealed = parse(&std::fs::read_to_string(copied.join(protect::SEALED_FILE)).unwrap());
    let e = Tpm::open(&tcti(&other))
        .unwrap()
        .unseal(&sealed)
        .unwrap_err();
    assert!(e.is_foreign_object(), "{e}");
    // Without its TPM the copy opens nowhere: nothing is regenerated in its place.
    drop(tpm);
    let before = std::fs::read(copied.join("core-data.key")).unwrap();
    let e = outpost_storage::load_or_create_secret(&copied.join("core-data.key")).unwrap_err();
    assert!(e.to_string().contains("cannot reach the TPM"), "{e}");
    assert_eq!(std::fs::read(copied.join("core-data.key")).unwrap(), before);
    // Sealed files whose sealed key is gone: refused, and no new key is made in its place.
    std::fs::remove_file(copied.join(protect::SEALED_FILE)).unwrap();
    let e = outpost_storage::read_secret(&copied.join("core-data.key")).unwrap_err();
    assert!(e.to_string().contains("is missing while"), "{e}");
    assert!(!copied.join(protect::SEALED_FILE).exists());
}

fn parse(text: &str) -> Sealed {
    let mut lines = text.lines().skip(1);
    Sealed {
        public: hex::decode(lines.next().expect("public")).expect("hex"),
        private: hex::decode(lines.next().expect("private")).expect("hex"),
    }
}
