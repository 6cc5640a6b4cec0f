//! What a publish reports: one event per file, and the summary built from
//! them (the same on the node and in the admin client), with their wire forms.

use super::*;

/// What became of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileOutcome {
    /// A new entry, acknowledged by the registry.
    Published,
    /// An entry prepared by an earlier run, sent again and acknowledged.
    Resent,
    /// Published by an earlier run: skipped.
    Skipped,
    /// The same bytes as another file of this run: skipped.
    Duplicate,
    /// Not published, and why; a later run tries again.
    Failed(String),
}

/// One file done (or one entry an earlier run prepared whose file is not among the inputs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEvent {
    /// None for an entry an earlier run prepared whose file is not among the inputs.
    pub path: Option<PathBuf>,
    /// None for a duplicate, and for a file that failed before it had an entry.
    pub entry: Option<EntryId>,
    pub outcome: FileOutcome,
}

/// Progress of a publish run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublishEvent {
    /// First: image files found, and entries an earlier run prepared (sent again first).
    Started { files: usize, resend: usize },
    /// One per input file as it is done, and one per entry an earlier run
    /// prepared whose file is not among the inputs (at the end).
    File(FileEvent),
}

/// What a publish run did.
#[derive(Clone, Debug, Default)]
pub struct PublishSummary {
    /// New entries the registry acknowledged.
    pub published: usize,
    /// Entries prepared by an earlier run, re-sent and acknowledged.
    pub resent: usize,
    /// Sources already published (by an earlier run), skipped.
    pub skipped: usize,
    /// Files with the same bytes as another file of this run.
    pub duplicates: usize,
    /// Files that could not be published, with the reason.
    pub failed: Vec<(PathBuf, String)>,
    /// Entries acknowledged in this run (new and re-sent).
    pub entries: Vec<EntryId>,
    /// Each input file and its entry in the registry (published now or before),
    /// sorted by path; files that failed, and copies of another file, are absent.
    pub files: Vec<(PathBuf, EntryId)>,
    /// The run stopped early (`stop_after_prepared`, or its caller asked it to).
    pub interrupted: bool,
}

impl PublishSummary {
    /// Counts one file event. The node and its client both build the summary
    /// from the same events with this, so they agree.
    pub(crate) fn record(&mut self, event: &FileEvent) {
        let path = event.path.clone();
        match (&event.outcome, event.entry) {
            (FileOutcome::Published, Some(id)) | (FileOutcome::Resent, Some(id)) => {
                if event.outcome == FileOutcome::Published {
                    self.published += 1;
                } else {
                    self.resent += 1;
                }
                self.entries.push(id);
                if let Some(path) = path {
                    self.files.push((path, id));
                }
            }
            (FileOutcome::Skipped, Some(id)) => {
                self.skipped += 1;
                if let Some(path) = path {
                    self.files.push((path, id));
                }
            }
            (FileOutcome::Duplicate, _) => self.duplicates += 1,
            (FileOutcome::Failed(reason), entry) => {
                let path = path.unwrap_or_else(|| earlier_entry_path(entry));
                self.failed.push((path, reason.clone()));
            }
            // Published, re-sent or skipped without an entry: not built by this crate.
            (_, None) => self.failed.push((path.unwrap_or_default(), "no entry reported".into())),
        }
    }

    /// The counts, on one line.
    pub(super) fn counts(&self) -> String {
        format!(
            "published {}, re-sent {} from an earlier run, skipped {} already published, {} duplicate file(s), \
             failed {}",
            self.published,
            self.resent,
            self.skipped,
            self.duplicates,
            self.failed.len()
        )
    }
}

/// `text` on one line: control characters and runs of white space become one space.
pub(super) fn one_line(text: &str) -> String {
    let line = text.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect::<Vec<_>>();
    if line.is_empty() { "no reason given".into() } else { line.join(" ") }
}

/// How a failed entry without a file is listed.
pub(super) fn earlier_entry_path(entry: Option<EntryId>) -> PathBuf {
    match entry {
        Some(id) => PathBuf::from(format!("(entry {id} from an earlier run)")),
        None => PathBuf::from("(an entry from an earlier run)"),
    }
}

impl fmt::Display for PublishSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.counts())?;
        for (path, reason) in &self.failed {
            write!(f, "\n  failed {}: {reason}", path.display())?;
        }
        if self.interrupted {
            write!(f, "\n  (stopped early; run again to finish)")?;
        }
        Ok(())
    }
}

impl From<&PublishEvent> for pb::PublishJobEvent {
    fn from(event: &PublishEvent) -> Self {
        let event = match event {
            PublishEvent::Started { files, resend } => pb::publish_job_event::Event::Started(pb::PublishStarted {
                files: *files as u64,
                resend: *resend as u64,
            }),
            PublishEvent::File(f) => {
                let (outcome, reason) = match &f.outcome {
                    FileOutcome::Published => (pb::FileOutcome::Published, String::new()),
                    FileOutcome::Resent => (pb::FileOutcome::Resent, String::new()),
                    FileOutcome::Skipped => (pb::FileOutcome::Skipped, String::new()),
                    FileOutcome::Duplicate => (pb::FileOutcome::Duplicate, String::new()),
                    FileOutcome::Failed(reason) => (pb::FileOutcome::Failed, reason.clone()),
                };
                pb::publish_job_event::Event::File(pb::PublishFileEvent {
                    path: f.path.as_ref().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default(),
                    entry_id: f.entry.map(|id| id.to_string()).unwrap_or_default(),
                    outcome: outcome as i32,
                    reason,
                })
            }
        };
        pb::PublishJobEvent { event: Some(event) }
    }
}

impl From<&PublishSummary> for pb::PublishJobSummary {
    fn from(s: &PublishSummary) -> Self {
        pb::PublishJobSummary {
            published: s.published as u64,
            resent: s.resent as u64,
            skipped: s.skipped as u64,
            duplicates: s.duplicates as u64,
            failed: s.failed.len() as u64,
            interrupted: s.interrupted,
        }
    }
}

impl TryFrom<pb::PublishFileEvent> for FileEvent {
    type Error = Error;
    fn try_from(p: pb::PublishFileEvent) -> Result<Self> {
        let entry = if p.entry_id.is_empty() {
            None
        } else {
            Some(
                p.entry_id
                    .parse()
                    .map_err(|e| Error::Protocol(format!("file event with entry {:?}: {e}", p.entry_id)))?,
            )
        };
        let outcome = match pb::FileOutcome::try_from(p.outcome) {
            Ok(pb::FileOutcome::Published) => FileOutcome::Published,
            Ok(pb::FileOutcome::Resent) => FileOutcome::Resent,
            Ok(pb::FileOutcome::Skipped) => FileOutcome::Skipped,
            Ok(pb::FileOutcome::Duplicate) => FileOutcome::Duplicate,
            Ok(pb::FileOutcome::Failed) if p.reason.is_empty() => FileOutcome::Failed("no reason given".into()),
            Ok(pb::FileOutcome::Failed) => FileOutcome::Failed(p.reason),
            _ => return Err(Error::Protocol(format!("file event with unknown outcome {}", p.outcome))),
        };
        if entry.is_none() && matches!(outcome, FileOutcome::Published | FileOutcome::Resent | FileOutcome::Skipped) {
            return Err(Error::Protocol("a published file event without its entry".into()));
        }
        Ok(FileEvent { path: (!p.path.is_empty()).then(|| PathBuf::from(p.path)), entry, outcome })
    }
}

impl PublishSummary {
    /// True when the node's counts are those of the events it sent.
    pub(crate) fn matches(&self, counts: &pb::PublishJobSummary) -> bool {
        let mine = pb::PublishJobSummary::from(self);
        (mine.published, mine.resent, mine.skipped, mine.duplicates, mine.failed)
            == (counts.published, counts.resent, counts.skipped, counts.duplicates, counts.failed)
    }
}
