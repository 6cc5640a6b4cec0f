//! A real SeaweedFS for tests (master, volume, filer and S3 in one `weed`
//! process in a temporary directory), shared by the tests of every crate
//! that stores through S3 (`#[path]`-included: it is not a crate).

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ambishare_db::{S3Config, S3Credentials, Secret};

const BUCKET: &str = "ambishare-test";
/// S3 answers about 3 s after start here; more under load.
const READY_WAIT: Duration = Duration::from_secs(30);
/// A normal stop can take over 15 s; the data is thrown away anyway.
const STOP_WAIT: Duration = Duration::from_secs(3);

pub fn find_weed() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("AMBISHARE_WEED") {
        return Some(PathBuf::from(path));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent()?.to_owned();
    let weed = root.join(".seaweedfs/bin/weed");
    weed.is_file().then_some(weed)
}

/// Ports handed to weed come from below Linux's ephemeral range (32768 and
/// up): a port of `bind(:0)` is free only until weed's own outgoing
/// connections take it (seen in CI: the filer's gRPC port taken that way).
const FIXED_PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Free loopback ports below the ephemeral range, held together while chosen
/// so they differ.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let span = u32::from(FIXED_PORTS.end - FIXED_PORTS.start);
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(N);
    while listeners.len() < N {
        let mut pick = [0u8; 4];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut pick).unwrap();
        let port = FIXED_PORTS.start + (u32::from_le_bytes(pick) % span) as u16;
        // Taken (by another test or process): pick again.
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            listeners.push(listener);
        }
    }
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf).unwrap();
    hex::encode(buf)
}

/// A single-process SeaweedFS (master, volume, filer, S3) in a temporary
/// directory, stopped on drop.
pub struct Seaweed {
    child: Child,
    dir: tempfile::TempDir,
    s3_port: u16,
    pub credentials: S3Credentials,
}

impl Seaweed {
    pub fn start(weed: &PathBuf) -> Seaweed {
        let dir = tempfile::tempdir().unwrap();
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] = free_ports::<8>();
        let credentials =
            S3Credentials { access_key_id: random_hex(10), secret_access_key: Secret::new(random_hex(20)) };
        let identities = serde_json_like(&credentials);
        std::fs::write(dir.path().join("s3.json"), identities).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let log = std::fs::File::create(dir.path().join("weed.log")).unwrap();
        let d = dir.path().display();
        let args = [
            "server".to_owned(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={d}/data"),
            format!("-master.port={master}"),
            format!("-master.port.grpc={master_grpc}"),
            "-master.telemetry=false".into(),
            "-master.volumeSizeLimitMB=64".into(),
            format!("-volume.port={volume}"),
            format!("-volume.port.grpc={volume_grpc}"),
            "-volume.max=16".into(),
            "-volume.preStopSeconds=0".into(),
            "-filer".into(),
            format!("-filer.port={filer}"),
            format!("-filer.port.grpc={filer_grpc}"),
            format!("-filer.localSocket={d}/filer.sock"),
            "-s3".into(),
            format!("-s3.port={s3}"),
            format!("-s3.port.grpc={s3_grpc}"),
            format!("-s3.localSocket={d}/s3.sock"),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={d}/s3.json"),
        ];
        let child = Command::new(weed)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", weed.display()));
        let mut seaweed = Seaweed { child, dir, s3_port: s3, credentials };
        seaweed.wait_ready();
        seaweed.create_bucket(weed, master, master_grpc);
        seaweed
    }

    /// Waits until the S3 port refuses an anonymous request (403): it is up.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("weed exited ({status}) before it was ready:\n{}", self.log_tail());
            }
            if http_status(self.s3_port).as_deref() == Some("403") {
                return;
            }
            assert!(Instant::now() < deadline, "weed's S3 port not ready in {READY_WAIT:?}:\n{}", self.log_tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn create_bucket(&self, weed: &PathBuf, master: u16, master_grpc: u16) {
        let mut shell = Command::new(weed)
            .arg("shell")
            .arg(format!("-master=127.0.0.1:{master}.{master_grpc}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        shell.stdin.take().unwrap().write_all(format!("s3.bucket.create -name {BUCKET}\n").as_bytes()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while shell.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = shell.kill();
                panic!("weed shell did not create the bucket in 20 s:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let output = shell.wait_with_output().unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        assert!(said.contains("created bucket"), "weed shell: {said}{}", String::from_utf8_lossy(&output.stderr));
    }

    pub fn config(&self, prefix: &str) -> S3Config {
        let mut config = S3Config::new(BUCKET, Some(format!("http://127.0.0.1:{}", self.s3_port)));
        config.prefix = prefix.to_owned();
        config.credentials = Some(self.credentials.clone());
        config
    }

    /// `config(prefix)` as a command line gives it (`--store`): the
    /// credentials in a file only its owner may read, in the fixture's directory.
    pub fn store_url(&self, prefix: &str) -> String {
        use std::os::unix::fs::OpenOptionsExt;
        let file = self.dir.path().join("credentials.toml");
        if !file.exists() {
            let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&file).unwrap();
            write!(
                out,
                "access_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
                self.credentials.access_key_id,
                self.credentials.secret_access_key.expose()
            )
            .unwrap();
        }
        format!("s3://{BUCKET}/{prefix}?endpoint=http://127.0.0.1:{}&credentials_file={}", self.s3_port, file.display())
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + STOP_WAIT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The S3 gateway's identities file, granting the generated key everything.
fn serde_json_like(credentials: &S3Credentials) -> String {
    format!(
        r#"{{"identities":[{{"name":"test","credentials":[{{"accessKey":"{}","secretKey":"{}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#,
        credentials.access_key_id,
        credentials.secret_access_key.expose()
    )
}

/// The status code of `GET /` on a loopback port, if it answers.
fn http_status(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    let head = String::from_utf8_lossy(&head).into_owned();
    head.split_whitespace().nth(1).map(str::to_owned)
}

/// The weed binary, or None when the test is to be skipped.
pub fn weed_or_skip() -> Option<PathBuf> {
    match find_weed() {
        Some(weed) => Some(weed),
        None if std::env::var("AMBISHARE_REQUIRE_S3").as_deref() == Ok("1") => {
            panic!("AMBISHARE_REQUIRE_S3=1 but no weed binary: run `bash deploy/seaweedfs.sh` or set AMBISHARE_WEED")
        }
        None => {
            // Straight to stderr: the test harness captures `eprintln!` of passing tests.
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! SKIPPED: the S3 backend was NOT tested: no weed binary \
                 (run `bash deploy/seaweedfs.sh`, or set AMBISHARE_WEED) !!!\n"
            );
            None
        }
    }
}
