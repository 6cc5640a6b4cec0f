//! Pages in a real browser: headless Chromium (Debian's `chromium`) loads a
//! page, runs its script and prints the DOM or a screenshot.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::{Error, Result};

/// Set to `1` to skip browser tests on a machine without Chromium (CI installs it).
pub const SKIP_VAR: &str = "AMBISHARE_SKIP_BROWSER_TESTS";
const LIMIT: Duration = Duration::from_secs(60);

/// A headless Chromium with its own throw-away profile.
pub struct Browser {
    binary: PathBuf,
    profile: tempfile::TempDir,
}

impl Browser {
    /// `$CHROMIUM`, else `chromium` or `chromium-browser` on the PATH. `Ok(None)`
    /// only when none is installed and [`SKIP_VAR`] says to skip.
    pub fn find() -> Result<Option<Browser>> {
        let candidates: Vec<PathBuf> = match std::env::var_os("CHROMIUM") {
            Some(p) => vec![PathBuf::from(p)],
            None => std::env::var_os("PATH")
                .map(|path| {
                    std::env::split_paths(&path)
                        .flat_map(|dir| [dir.join("chromium"), dir.join("chromium-browser")])
                        .collect()
                })
                .unwrap_or_default(),
        };
        match candidates.into_iter().find(|p| p.is_file()) {
            Some(binary) => Ok(Some(Browser { binary, profile: tempfile::tempdir()? })),
            None if std::env::var(SKIP_VAR).as_deref() == Ok("1") => Ok(None),
            None => Err(Error::Other(format!(
                "no Chromium found: install Debian's chromium package (.ci/run does), \
                 set CHROMIUM to its binary, or set {SKIP_VAR}=1 to skip the browser tests"
            ))),
        }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .arg("--headless")
            // Root in a container has no user namespace for the sandbox.
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .arg("--no-first-run")
            .arg("--hide-scrollbars")
            .arg(format!("--user-data-dir={}", self.profile.path().display()))
            // Time for the page's scripts after load (virtual: it passes as fast as the page is idle).
            .arg("--virtual-time-budget=3000")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    async fn run(&self, mut command: Command, url: &str) -> Result<Vec<u8>> {
        let output = tokio::time::timeout(LIMIT, command.arg(url).output())
            .await
            .map_err(|_| Error::Other(format!("chromium did not finish loading {url} within {LIMIT:?}")))??;
        if !output.status.success() {
            return Err(Error::Other(format!(
                "chromium failed on {url} ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(output.stdout)
    }

    /// The page's DOM after it loaded and its scripts ran.
    pub async fn dom(&self, url: &str) -> Result<String> {
        let mut command = self.command();
        command.arg("--dump-dom").stderr(Stdio::piped());
        Ok(String::from_utf8_lossy(&self.run(command, url).await?).into_owned())
    }

    /// A PNG screenshot of the page, `width`x`height` pixels.
    pub async fn screenshot(&self, url: &str, out: &Path, width: u32, height: u32) -> Result<()> {
        let mut command = self.command();
        command
            .arg(format!("--screenshot={}", std::path::absolute(out)?.display()))
            .arg(format!("--window-size={width},{height}"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        self.run(command, url).await?;
        if !out.is_file() {
            return Err(Error::Other(format!("chromium wrote no screenshot of {url}")));
        }
        Ok(())
    }
}

/// Every `<img>` of a DOM: its `src` and the `data-natural-width` the page's
/// script recorded once it loaded (`None`: never recorded).
pub fn images(dom: &str) -> Vec<(String, Option<u32>)> {
    dom.split("<img")
        .skip(1)
        .map(|tag| {
            let tag = tag.split('>').next().unwrap_or_default();
            (
                attribute(tag, "src").unwrap_or_default(),
                attribute(tag, "data-natural-width").and_then(|w| w.parse().ok()),
            )
        })
        .collect()
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag.get(start..)?.find('"')?;
    tag.get(start..start + len).map(|v| v.replace("&amp;", "&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_and_their_recorded_widths_are_read_from_the_dom() {
        let dom =
            r#"<p><img class="thumb" src="/a.jpg" data-natural-width="256"><img src="/b.png?x=1&amp;y=2" alt="b"></p>"#;
        assert_eq!(images(dom), vec![("/a.jpg".to_owned(), Some(256)), ("/b.png?x=1&y=2".to_owned(), None)]);
    }
}
