//! A minimal TPM 2.0 client: just what sealing a key needs (TCG TPM 2.0 Library, Part 3:
//! `CreatePrimary`, `Create`, `Load`, `Unseal`, `FlushContext`, `GetCapability`,
//! `Startup`), marshalled by hand over the kernel's resource manager (`/dev/tpmrm0`) or a
//! software TPM's TCP command port (swtpm), both of which carry raw TPM commands.
//!
//! Written here rather than bound from the C TSS: the commands are few and fixed, the
//! binary stays static (the images are `FROM scratch`), and there is no native library to
//! install on the node. Every response is checked for length before it is read.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

/// Where the TPM is, in the TCTI syntax of the TCG tools (`device:/dev/tpmrm0`,
/// `swtpm:host=127.0.0.1,port=2321`), so the same string works with `tpm2-tools`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tcti {
    Device(PathBuf),
    Swtpm { host: String, port: u16 },
}

impl Tcti {
    /// The kernel's resource manager, the usual TPM of a Linux node.
    pub fn default_device() -> Self {
        Tcti::Device(PathBuf::from("/dev/tpmrm0"))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, conf) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "device" if conf.is_empty() => Ok(Self::default_device()),
            "device" => Ok(Tcti::Device(PathBuf::from(conf))),
            "swtpm" => {
                let (mut host, mut port) = ("127.0.0.1".to_string(), 2321u16);
                for kv in conf.split(',').filter(|kv| !kv.is_empty()) {
                    match kv.split_once('=') {
                        Some(("host", v)) => host = v.to_string(),
                        Some(("port", v)) => {
                            port = v.parse().map_err(|_| format!("'{v}' is not a port"))?;
                        }
                        _ => return Err(format!("unknown swtpm option '{kv}' (host=, port=)")),
                    }
                }
                Ok(Tcti::Swtpm { host, port })
            }
            _ => Err(format!(
                "'{s}' is not a TPM: give device:/dev/tpmrm0 or swtpm:host=H,port=P"
            )),
        }
    }
}

impl std::fmt::Display for Tcti {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Tcti::Device(p) => write!(f, "device:{}", p.display()),
            Tcti::Swtpm { host, port } => write!(f, "swtpm:host={host},port={port}"),
        }
    }
}

/// A TPM error: the transport failed, the answer was malformed, or the TPM refused.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    #[error("cannot reach the TPM at {tcti}: {source}")]
    Io {
        tcti: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the TPM's answer is malformed ({0})")]
    Malformed(&'static str),
    #[error("the TPM refused {command}: response code {code:#x}{}", rc_hint(*code))]
    Refused { command: &'static str, code: u32 },
}

impl TpmError {
    /// The TPM refused to load the sealed object: it was made by another TPM (or this
    /// one's owner hierarchy was cleared since), or it was tampered with.
    pub fn is_foreign_object(&self) -> bool {
        matches!(self, TpmError::Refused { command: "Load", code } if is_integrity(*code))
    }
}

/// Format-one response codes carry the parameter they refer to in the high bits; the
/// error itself is the low six bits plus 0x80.
fn rc_base(code: u32) -> u32 {
    if code & 0x80 != 0 {
        0x80 | (code & 0x3f)
    } else {
        code
    }
}

fn is_integrity(code: u32) -> bool {
    // TPM_RC_INTEGRITY, TPM_RC_BINDING (the public and private parts do not match),
    // TPM_RC_KEY (the parent is not the one that made it).
    matches!(rc_base(code), 0x9f | 0xa5 | 0x9c)
}

fn rc_hint(code: u32) -> &'static str {
    match rc_base(code) {
        c if is_integrity(c) => " (sealed by another TPM, or this TPM was cleared since)",
        0x902 => " (no room for another object)",
        0x921 => " (the TPM is in dictionary-attack lockout)",
        0x100 => " (the TPM was not started)",
        0x101 => " (the TPM failed its self test)",
        _ => "",
    }
}

const ST_NO_SESSIONS: u16 = 0x8001;
const ST_SESSIONS: u16 = 0x8002;
const RH_OWNER: u32 = 0x4000_0001;
const RS_PW: u32 = 0x4000_0009;
const ALG_ECC: u16 = 0x0023;
const ALG_KEYEDHASH: u16 = 0x0008;
const ALG_SHA256: u16 = 0x000b;
const ALG_AES: u16 = 0x0006;
const ALG_CFB: u16 = 0x0043;
const ALG_NULL: u16 = 0x0010;
const ECC_NIST_P256: u16 = 0x0003;
const TRANSIENT_FIRST: u32 = 0x8000_0000;
const RC_INITIALIZE: u32 = 0x100;

// Object attributes (Part 2, 8.3).
const FIXED_TPM: u32 = 1 << 1;
const FIXED_PARENT: u32 = 1 << 4;
const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
const USER_WITH_AUTH: u32 = 1 << 6;
const NO_DA: u32 = 1 << 10;
const RESTRICTED: u32 = 1 << 16;
const DECRYPT: u32 = 1 << 17;

/// The largest answer a TPM gives (TPM_PT_MAX_RESPONSE_SIZE is 4096 on every known TPM).
const MAX_RESPONSE: usize = 8192;

/// An object sealed under the owner hierarchy's storage key: its public and private
/// parts as the TPM returned them (the private part is encrypted by the TPM with a key
/// that never leaves it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub public: Vec<u8>,
    pub private: Vec<u8>,
}

/// One conversation with the TPM. Each operation flushes the objects it loaded, also when
/// it fails, so a TPM without a resource manager (swtpm) does not fill up.
pub struct Tpm {
    tcti: Tcti,
    link: Link,
}

enum Link {
    Device(std::fs::File),
    Tcp(TcpStream),
}

impl Tpm {
    pub fn open(tcti: &Tcti) -> Result<Self, TpmError> {
        let io = |source| TpmError::Io {
            tcti: tcti.to_string(),
            source,
        };
        let link = match tcti {
            Tcti::Device(path) => Link::Device(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(io)?,
            ),
            Tcti::Swtpm { host, port } => {
                let s = TcpStream::connect((host.as_str(), *port)).map_err(io)?;
                s.set_read_timeout(Some(Duration::from_secs(60)))
                    .map_err(io)?;
                s.set_nodelay(true).map_err(io)?;
                Link::Tcp(s)
            }
        };
        Ok(Self {
            tcti: tcti.clone(),
            link,
        })
    }

    /// Seals `secret` (at most 128 bytes) under the owner hierarchy's storage key.
    pub fn seal(&mut self, secret: &[u8]) -> Result<Sealed, TpmError> {
        if secret.len() > 128 {
            return Err(TpmError::Malformed("a sealed secret is at most 128 bytes"));
        }
        self.flush_leftovers()?;
        let parent = self.primary()?;
        let sealed = self.create_sealed(parent, secret);
        self.flush(parent);
        sealed
    }

    /// Unseals what [`Tpm::seal`] sealed, on this TPM.
    pub fn unseal(&mut self, sealed: &Sealed) -> Result<Vec<u8>, TpmError> {
        self.flush_leftovers()?;
        let parent = self.primary()?;
        let loaded = self.load(parent, sealed);
        self.flush(parent);
        let object = loaded?;
        let data = self.unseal_object(object);
        self.flush(object);
        data
    }

    /// The storage primary key of the owner hierarchy (the TCG's ECC P-256 SRK template):
    /// the same key every time for the same TPM, so nothing about it is stored.
    fn primary(&mut self) -> Result<u32, TpmError> {
        let mut public = Vec::with_capacity(96);
        put_u16(&mut public, ALG_ECC);
        put_u16(&mut public, ALG_SHA256);
        put_u32(
            &mut public,
            FIXED_TPM
                | FIXED_PARENT
                | SENSITIVE_DATA_ORIGIN
                | USER_WITH_AUTH
                | NO_DA
                | RESTRICTED
                | DECRYPT,
        );
        put_u16(&mut public, 0); // authPolicy
        put_u16(&mut public, ALG_AES);
        put_u16(&mut public, 128);
        put_u16(&mut public, ALG_CFB);
        put_u16(&mut public, ALG_NULL); // scheme
        put_u16(&mut public, ECC_NIST_P256);
        put_u16(&mut public, ALG_NULL); // kdf
        for _ in 0..2 {
            put_u16(&mut public, 32);
            public.extend_from_slice(&[0; 32]);
        }
        let mut params = Vec::with_capacity(128);
        params.extend_from_slice(&[0, 4, 0, 0, 0, 0]); // inSensitive: no auth, no data
        put_tpm2b(&mut params, &public);
        put_u16(&mut params, 0); // outsideInfo
        put_u32(&mut params, 0); // creationPCR
        let resp = self.call_authorized("CreatePrimary", 0x131, RH_OWNER, &params)?;
        let mut r = Reader::new(&resp);
        r.u32()
    }

    fn create_sealed(&mut self, parent: u32, secret: &[u8]) -> Result<Sealed, TpmError> {
        let mut sensitive = Vec::with_capacity(secret.len() + 4);
        put_u16(&mut sensitive, 0); // userAuth
        put_tpm2b(&mut sensitive, secret);
        let mut public = Vec::with_capacity(16);
        put_u16(&mut public, ALG_KEYEDHASH);
        put_u16(&mut public, ALG_SHA256);
        put_u32(
            &mut public,
            FIXED_TPM | FIXED_PARENT | USER_WITH_AUTH | NO_DA,
        );
        put_u16(&mut public, 0); // authPolicy
        put_u16(&mut public, ALG_NULL); // scheme: a sealed data object
        put_u16(&mut public, 0); // unique
        let mut params = Vec::with_capacity(64 + secret.len());
        put_tpm2b(&mut params, &sensitive);
        put_tpm2b(&mut params, &public);
        put_u16(&mut params, 0);
        put_u32(&mut params, 0);
        let resp = self.call_authorized("Create", 0x153, parent, &params)?;
        let mut r = Reader::new(&resp);
        r.u32()?; // parameterSize
        let private = r.tpm2b_raw()?.to_vec();
        let public = r.tpm2b_raw()?.to_vec();
        Ok(Sealed { public, private })
    }

    fn load(&mut self, parent: u32, sealed: &Sealed) -> Result<u32, TpmError> {
        let mut params = Vec::with_capacity(sealed.private.len() + sealed.public.len());
        params.extend_from_slice(&sealed.private);
        params.extend_from_slice(&sealed.public);
        let resp = self.call_authorized("Load", 0x157, parent, &params)?;
        Reader::new(&resp).u32()
    }

    fn unseal_object(&mut self, object: u32) -> Result<Vec<u8>, TpmError> {
        let resp = self.call_authorized("Unseal", 0x15e, object, &[])?;
        let mut r = Reader::new(&resp);
        r.u32()?; // parameterSize
        let raw = r.tpm2b_raw()?;
        Ok(raw[2..].to_vec())
    }

    fn flush(&mut self, handle: u32) {
        let mut cmd = header(ST_NO_SESSIONS, 0x165);
        put_u32(&mut cmd, handle);
        if let Err(e) = self.exchange("FlushContext", cmd) {
            tracing::debug!(handle, error = %e, "cannot flush a TPM object");
        }
    }

    /// Flushes every transient object, before an operation loads its own. Only for a TPM
    /// without a resource manager (swtpm), whose objects are shared by all its clients:
    /// swtpm serves one connection at a time, so objects there when this one starts were
    /// left by a client that died mid-operation. The kernel's resource manager gives each
    /// client its own and flushes them when it goes.
    fn flush_leftovers(&mut self) -> Result<(), TpmError> {
        if !matches!(self.link, Link::Tcp(_)) {
            return Ok(());
        }
        let mut cmd = header(ST_NO_SESSIONS, 0x17a);
        put_u32(&mut cmd, 1); // TPM_CAP_HANDLES
        put_u32(&mut cmd, TRANSIENT_FIRST);
        put_u32(&mut cmd, 64);
        let resp = self.exchange("GetCapability", cmd)?;
        let mut r = Reader::new(&resp);
        r.u8()?; // moreData
        r.u32()?; // capability
        let n = r.u32()?;
        let handles = (0..n.min(64))
            .map(|_| r.u32())
            .collect::<Result<Vec<_>, _>>()?;
        for h in handles {
            self.flush(h);
        }
        Ok(())
    }

    /// A command with one handle authorized by its (empty) password.
    fn call_authorized(
        &mut self,
        command: &'static str,
        code: u32,
        handle: u32,
        params: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let build = || {
            let mut cmd = header(ST_SESSIONS, code);
            put_u32(&mut cmd, handle);
            put_u32(&mut cmd, 9); // authorizationSize
            put_u32(&mut cmd, RS_PW);
            put_u16(&mut cmd, 0); // nonce
            cmd.push(0); // sessionAttributes
            put_u16(&mut cmd, 0); // hmac: the empty password
            cmd.extend_from_slice(params);
            cmd
        };
        match self.exchange(command, build()) {
            Err(TpmError::Refused { code, .. }) if code == RC_INITIALIZE => {
                let mut startup = header(ST_NO_SESSIONS, 0x144);
                put_u16(&mut startup, 0); // TPM_SU_CLEAR
                self.exchange("Startup", startup)?;
                self.exchange(command, build())
            }
            other => other,
        }
    }

    /// Sends one command and returns the response after its header (response code 0).
    fn exchange(&mut self, command: &'static str, mut cmd: Vec<u8>) -> Result<Vec<u8>, TpmError> {
        let len = u32::try_from(cmd.len()).map_err(|_| TpmError::Malformed("command too long"))?;
        cmd[2..6].copy_from_slice(&len.to_be_bytes());
        let tcti = self.tcti.to_string();
        let io = |source| TpmError::Io {
            tcti: tcti.clone(),
            source,
        };
        let resp = match &mut self.link {
            Link::Device(f) => {
                f.write_all(&cmd).map_err(io)?;
                // The kernel returns the whole response to one read.
                let mut buf = vec![0u8; MAX_RESPONSE];
                let n = f.read(&mut buf).map_err(io)?;
                buf.truncate(n);
                buf
            }
            Link::Tcp(s) => {
                s.write_all(&cmd).map_err(io)?;
                let mut head = [0u8; 10];
                s.read_exact(&mut head).map_err(io)?;
                let size = u32::from_be_bytes([head[2], head[3], head[4], head[5]]) as usize;
                if !(10..=MAX_RESPONSE).contains(&size) {
                    return Err(TpmError::Malformed("response size"));
                }
                let mut buf = head.to_vec();
                buf.resize(size, 0);
                s.read_exact(&mut buf[10..]).map_err(io)?;
                buf
            }
        };
        if resp.len() < 10 {
            return Err(TpmError::Malformed("short response"));
        }
        let size = u32::from_be_bytes([resp[2], resp[3], resp[4], resp[5]]) as usize;
        if size != resp.len() {
            return Err(TpmError::Malformed("response size"));
        }
        let code = u32::from_be_bytes([resp[6], resp[7], resp[8], resp[9]]);
        if code != 0 {
            return Err(TpmError::Refused { command, code });
        }
        Ok(resp[10..].to_vec())
    }
}

fn header(tag: u16, code: u32) -> Vec<u8> {
    let mut cmd = Vec::with_capacity(64);
    put_u16(&mut cmd, tag);
    put_u32(&mut cmd, 0); // the size, set when sent
    put_u32(&mut cmd, code);
    cmd
}

fn put_u16(buf: &mut Vec<u8>, v: u16) {
    buf.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_be_bytes());
}

/// A sized buffer (`TPM2B_*`). Callers pass what fits: every buffer built here is small.
fn put_tpm2b(buf: &mut Vec<u8>, data: &[u8]) {
    put_u16(buf, data.len() as u16);
    buf.extend_from_slice(data);
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TpmError> {
        if self.buf.len() < n {
            return Err(TpmError::Malformed("truncated response"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, TpmError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, TpmError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A `TPM2B_*` with its size prefix, as the TPM wants it back.
    fn tpm2b_raw(&mut self) -> Result<&'a [u8], TpmError> {
        let size = self
            .buf
            .get(..2)
            .ok_or(TpmError::Malformed("truncated response"))?;
        let n = u16::from_be_bytes([size[0], size[1]]) as usize;
        self.take(2 + n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcti_strings_are_those_of_the_tcg_tools() {
        assert_eq!(Tcti::parse("device:").unwrap(), Tcti::default_device());
        assert_eq!(
            Tcti::parse("device:/dev/tpm0").unwrap(),
            Tcti::Device("/dev/tpm0".into())
        );
        let s = Tcti::parse("swtpm:host=10.0.0.2,port=2400").unwrap();
        assert_eq!(
            s,
            Tcti::Swtpm {
                host: "10.0.0.2".into(),
                port: 2400
            }
        );
        assert_eq!(Tcti::parse(&s.to_string()).unwrap(), s);
        for bad in ["tabrmd", "swtpm:port=x", "swtpm:path=/x", "mssim:port=1"] {
            assert!(Tcti::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn response_codes_say_what_went_wrong() {
        // TPM_RC_INTEGRITY on Load's first parameter (inPrivate), as a foreign blob gets.
        let e = TpmError::Refused {
            command: "Load",
            code: 0x1df,
        };
        assert!(e.is_foreign_object());
        assert!(e.to_string().contains("another TPM"), "{e}");
        let e = TpmError::Refused {
            command: "Unseal",
            code: 0x1df,
        };
        assert!(!e.is_foreign_object());
        let r = Reader::new(&[0, 3, 1, 2]).tpm2b_raw().map(<[u8]>::len);
        assert!(matches!(r, Err(TpmError::Malformed(_))));
    }
}
