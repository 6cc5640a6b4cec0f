//! Throughput and memory: the library in-process, and the real node binaries
//! as processes on loopback (peak memory read from /proc/<pid>/status).

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ambishare_rpc::{ClientIdentity, KeyClient, RegistryClient};
use ambishare_shared::crypto::{SealingKey, SigningKey};
use ambishare_shared::entry::NewEntry;
use ambishare_shared::model::ModelRunner;
use ambishare_shared::pipeline::{decode_image, encode_image};
use ambishare_shared::{Entry, EntryId};
use futures::StreamExt;
use image::RgbImage;

use crate::scheme::DerivedScheme;
use crate::{Error, Result, list_images, load_rgb};

pub fn has_cwebp() -> bool {
    Command::new("cwebp")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// WebP (cwebp, lossy) of at most about `target` bytes, decoded; None when cwebp fails.
pub fn webp_at_most(img: &RgbImage, target: usize) -> Result<Option<RgbImage>> {
    let dir = tempfile::tempdir()?;
    let (src, dst) = (dir.path().join("in.png"), dir.path().join("out.webp"));
    img.save(&src)?;
    let ok = Command::new("cwebp")
        .args(["-quiet", "-m", "6", "-pass", "6", "-size"])
        .arg(target.to_string())
        .arg(&src)
        .arg("-o")
        .arg(&dst)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return Ok(None);
    }
    Ok(Some(image::open(&dst)?.to_rgb8()))
}

fn rate(n: usize, secs: f64, unit: &str) -> String {
    format!("{:.1} {unit}/s", n as f64 / secs.max(1e-9))
}

/// Library figures on `images` under the shipped scheme (format v3): encode +
/// ambiguate + sign against JPEG + AES-256-GCM, and decode.
pub fn in_process(runner: &ModelRunner, images: &[&RgbImage], scheme: &DerivedScheme) -> Result<Vec<(String, String)>> {
    let (signer, _) = SigningKey::generate()?;
    let (sealer, _) = SealingKey::generate()?;
    let pixels: f64 = images.iter().map(|i| (i.width() * i.height()) as f64).sum();
    let mut rows = Vec::new();

    let t = Instant::now();
    let mut made = Vec::new();
    for img in images {
        let code = encode_image(runner, img)?;
        let derived = scheme.publish(&code)?;
        let (public, key) = (derived.public, derived.key);
        let entry = Entry::create(
            NewEntry {
                owner: signer.public_key().owner_id(),
                dataset: "eval".parse()?,
                model: *runner.id(),
                width: img.width(),
                height: img.height(),
                label: String::new(),
                code: public,
            },
            &signer,
        )?;
        made.push((entry, key));
    }
    let secs = t.elapsed().as_secs_f64();
    rows.push((
        "encode + ambiguate (format v3, self-checked) + sign (library, CPU)".to_owned(),
        format!("{} ({:.2} MPixel/s)", rate(images.len(), secs, "images"), pixels / 1e6 / secs),
    ));

    let t = Instant::now();
    for img in images {
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90).encode_image(*img)?;
        let _sealed = sealer.seal(&jpeg, b"image")?;
    }
    let jsecs = t.elapsed().as_secs_f64();
    rows.push((
        "JPEG (quality 90) + AES-256-GCM of the same images, the alternative".to_owned(),
        format!(
            "{} ({:.2} MPixel/s); ambishare is {:.1}x slower",
            rate(images.len(), jsecs, "images"),
            pixels / 1e6 / jsecs,
            secs / jsecs
        ),
    ));

    let t = Instant::now();
    for (entry, key) in &made {
        let code = key.disambiguate(&entry.code)?;
        let _ = decode_image(runner, &code, entry.width, entry.height)?;
    }
    let secs = t.elapsed().as_secs_f64();
    rows.push((
        "disambiguate + decode (library, CPU)".to_owned(),
        format!("{} ({:.2} MPixel/s)", rate(images.len(), secs, "images"), pixels / 1e6 / secs),
    ));
    Ok(rows)
}

fn free_port() -> Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_port(port: u16) -> Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::Other(format!("nothing listens on port {port}")))
}

/// Peak resident memory (VmHWM) of a running process, in MiB.
fn peak_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a process to completion, sampling its peak memory; (seconds, MiB).
fn timed_with_memory(cmd: &mut Command) -> Result<(f64, f64)> {
    let t = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let mut peak = 0f64;
    loop {
        if let Some(p) = peak_mib(child.id()) {
            peak = peak.max(p);
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                return Err(Error::Other(format!("{:?} failed", cmd.get_program())));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((t.elapsed().as_secs_f64(), peak))
}

/// The node binaries in `bin` as processes: publish, key releases, streaming, pull, memory.
pub fn with_nodes(bin: &Path, model: &Path, images_dir: &Path) -> Result<Vec<(String, String)>> {
    let dir = tempfile::tempdir()?;
    let t = dir.path();
    let exe = |name: &str| bin.join(name);
    let (rport, oport) = (free_port()?, free_port()?);
    let registry_url = format!("http://127.0.0.1:{rport}");
    let owner_url = format!("https://127.0.0.1:{oport}");
    let registry = Node(
        Command::new(exe("ambishare-registry"))
            .args(["serve", "--danger-plaintext", "--listen"])
            .arg(format!("127.0.0.1:{rport}"))
            .arg("--data-dir")
            .arg(t.join("registry"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_port(rport)?;
    let owner_home = t.join("owner");
    run(Command::new(exe("ambishare-owner")).arg("--home").arg(&owner_home).arg("init"))?;
    let owner = Node(
        Command::new(exe("ambishare-owner"))
            .arg("--home")
            .arg(&owner_home)
            .args(["serve", "--listen"])
            .arg(format!("127.0.0.1:{oport}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_port(oport)?;

    // Four variants of each held-out image: 4x the entries, every file distinct.
    let inputs = t.join("in");
    std::fs::create_dir_all(&inputs)?;
    let mut pixels = 0f64;
    let mut count = 0usize;
    for (i, path) in list_images(images_dir)?.iter().enumerate() {
        let img = load_rgb(path)?;
        for (j, v) in [
            img.clone(),
            image::imageops::flip_horizontal(&img),
            image::imageops::flip_vertical(&img),
            image::imageops::rotate180(&img),
        ]
        .iter()
        .enumerate()
        {
            v.save(inputs.join(format!("{i:03}-{j}.png")))?;
            pixels += (v.width() * v.height()) as f64;
            count += 1;
        }
    }
    let model = std::fs::canonicalize(model)?;
    let publish_start = Instant::now();
    run(Command::new(exe("ambishare-owner"))
        .arg("--home")
        .arg(&owner_home)
        .args([
            "publish",
            "--quiet",
            "--owner",
            &owner_url,
            "--registry",
            &registry_url,
            "--dataset",
            "eval",
            "--model",
        ])
        .arg(&model)
        .arg(&inputs))?;
    let publish_secs = publish_start.elapsed().as_secs_f64();
    let mut rows = vec![(
        format!("publish through the owner node: {count} images, registry on loopback"),
        format!("{} ({:.2} MPixel/s)", rate(count, publish_secs, "images"), pixels / 1e6 / publish_secs),
    )];

    let party = t.join("party");
    run(Command::new(exe("ambishare-client")).arg("--home").arg(&party).args(["enroll", "--party", "eval"]))?;
    run(Command::new(exe("ambishare-owner"))
        .arg("--home")
        .arg(&owner_home)
        .args(["grant", "--owner", &owner_url, "--party", "eval", "--dataset", "eval", "--tier", "full", "--csr"])
        .arg(party.join("party.csr"))
        .arg("--out")
        .arg(party.join("party.pem")))?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (key_rows, ids) = runtime.block_on(async {
        let read = |name: &str| std::fs::read_to_string(party.join(name));
        let identity = ClientIdentity {
            cert_pem: read("party.pem")?,
            key_pem: read("party.key")?,
            ca_pem: read("party-server-ca.pem")?,
            domain: "localhost".into(),
        };
        let registry_client =
            RegistryClient::connect(&registry_url, None).await.map_err(|e| Error::Other(e.to_string()))?;
        let mut ids: Vec<EntryId> = Vec::new();
        let mut stream =
            registry_client.stream_entries(None, None, None).await.map_err(|e| Error::Other(e.to_string()))?;
        while let Some(e) = stream.next().await {
            ids.push(e.map_err(|e| Error::Other(e.to_string()))?.id);
        }
        let mut keys = KeyClient::connect(&owner_url, identity).await.map_err(|e| Error::Other(e.to_string()))?;
        let mut rows = Vec::new();
        let mut key_bytes = 0usize;
        for batch in [1usize, 256] {
            let request: Vec<EntryId> = ids.iter().cycle().take(batch).copied().collect();
            let mut latencies = Vec::new();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(3) {
                let t0 = Instant::now();
                let answers = keys.get_keys(&request).await.map_err(|e| Error::Other(e.to_string()))?;
                latencies.push(t0.elapsed().as_secs_f64() * 1e3);
                if answers.iter().any(|(_, a)| a.is_err()) {
                    return Err(Error::Other("a key was denied".into()));
                }
                if key_bytes == 0 {
                    let sizes: Vec<usize> =
                        answers.iter().filter_map(|(_, a)| a.as_ref().ok()).map(|k| k.encode().len()).collect();
                    key_bytes = sizes.iter().sum::<usize>() / sizes.len().max(1);
                }
            }
            let secs = start.elapsed().as_secs_f64();
            latencies.sort_by(f64::total_cmp);
            let p = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q) as usize];
            rows.push((
                format!(
                    "key releases over mTLS, batches of {batch} ids (audit flushed per call; a whole-image key of \
                     {key_bytes} bytes on average, parsed and checked by the client)"
                ),
                format!(
                    "{} ({} calls; p50 {:.2} ms, p99 {:.2} ms a call)",
                    rate(latencies.len() * batch, secs, "keys"),
                    latencies.len(),
                    p(0.5),
                    p(0.99)
                ),
            ));
        }
        let start = Instant::now();
        let mut streamed = 0usize;
        while start.elapsed() < Duration::from_secs(3) {
            let mut s =
                registry_client.stream_entries(None, None, None).await.map_err(|e| Error::Other(e.to_string()))?;
            while let Some(e) = s.next().await {
                e.map_err(|e| Error::Other(e.to_string()))?;
                streamed += 1;
            }
        }
        rows.push((
            "registry StreamEntries, codes parsed and checked by the client".to_owned(),
            rate(streamed, start.elapsed().as_secs_f64(), "codes"),
        ));
        Ok::<_, Error>((rows, ids))
    })?;
    rows.extend(key_rows);

    let out = t.join("pulled");
    let (secs, client_mib) = timed_with_memory(
        Command::new(exe("ambishare-client"))
            .arg("--home")
            .arg(&party)
            .args([
                "pull",
                "--quiet",
                "--registry",
                &registry_url,
                "--owner",
                &owner_url,
                "--dataset",
                "eval",
                "--device",
                "cpu",
            ])
            .arg("--out")
            .arg(&out)
            .env("RUST_LOG", "warn"),
    )?;
    let pulled = std::fs::read_dir(&out)?.count();
    rows.push((
        format!("client pull: stream, verify, {} keys over mTLS, fetch decoder, decode, write PNG", ids.len()),
        format!("{} ({:.2} MPixel/s, whole process incl. start-up)", rate(pulled, secs, "images"), pixels / 1e6 / secs),
    ));
    let mem = |pid: u32| peak_mib(pid).map_or("-".to_owned(), |m| format!("{m:.0} MiB"));
    rows.push(("peak memory: registry node (VmHWM)".to_owned(), mem(registry.0.id())));
    rows.push(("peak memory: owner node, serving and publishing (VmHWM)".to_owned(), mem(owner.0.id())));
    rows.push(("peak memory: client pull (VmHWM, sampled)".to_owned(), format!("{client_mib:.0} MiB")));
    drop((registry, owner));
    Ok(rows)
}
