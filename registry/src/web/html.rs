//! The web view's HTML. maud escapes everything it interpolates, so names
//! and labels from owners can never become markup.

use maud::{DOCTYPE, Markup, html};

use crate::web::views::{
    DatasetPageView, DatasetView, EntryView, HomeView, ModelView, ThumbnailView, dataset_url, model_url,
};

const PENDING: &str = "/static/pending.svg";
const UNAVAILABLE: &str = "/static/unavailable.svg";

fn page(title: &str, crumbs: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · ambishare registry" }
                link rel="stylesheet" href="/static/web.css";
                script src="/static/web.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "ambishare registry" }
                    nav { (crumbs) }
                }
                main { (body) }
                footer {
                    "What the public sees: every code here is ambiguated (real and fake nonzeros mixed); "
                    "only parties the owner authorizes can decode the images. "
                    a href="/api/v1/datasets" { "JSON API" }
                }
            }
        }
    }
}

/// Sizes in B, KB, MB (powers of 1000, as disks count).
pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} KB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// First 8 hex digits of a hash (owner and model ids).
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// Last 8 hex digits of an entry id: a UUIDv7 begins with its timestamp, so
/// entries published together share their first digits but not their last.
fn short_entry(id: &str) -> &str {
    id.len().checked_sub(8).and_then(|start| id.get(start..)).unwrap_or(id)
}

fn owner_name(display_name: &str, owner_id: &str) -> String {
    if display_name.is_empty() { format!("owner {}", short(owner_id)) } else { display_name.to_owned() }
}

fn thumbnail(t: &ThumbnailView, alt: &str) -> Markup {
    match t.state {
        "ready" => html! {
            img.thumb src=(t.url) width=(t.width) height=(t.height) alt=(alt) loading="lazy";
        },
        "pending" => html! {
            img.thumb.pending src=(PENDING) data-thumbnail=(t.url) width=(t.width) height=(t.height)
                alt="rendering the public decode" title="rendering the public decode";
        },
        _ => html! {
            img.thumb.unavailable src=(UNAVAILABLE) width=(t.width) height=(t.height)
                alt="no thumbnail" title=(t.reason.as_deref().unwrap_or("no thumbnail"));
        },
    }
}

fn dataset_row(d: &DatasetView) -> Markup {
    html! {
        tr {
            td { a href=(d.url) { (d.dataset) } }
            td.num { (d.entries) }
            td.num { (bytes(d.code_bytes)) }
            td {
                @for m in &d.models {
                    a.mono href=(model_url(&m.model_id)) title=(m.model_id) { (short(&m.model_id)) }
                    " "
                }
            }
            td { time datetime=(d.last_publish) { (d.last_publish) } }
        }
    }
}

pub fn home(view: &HomeView) -> Markup {
    let body = html! {
        h1 { "Owners and their datasets" }
        @if view.owners.is_empty() {
            p.empty { "Nothing published yet." }
        }
        @for owner in &view.owners {
            section.owner {
                h2 { (owner_name(&owner.display_name, &owner.owner_id)) }
                p.meta { "owner id " span.mono { (owner.owner_id) } " · registered " (owner.registered) }
                @if owner.datasets.is_empty() {
                    p.empty { "No entries yet." }
                } @else {
                    table {
                        thead { tr { th { "dataset" } th { "entries" } th { "code bytes" } th { "models" } th { "last publish" } } }
                        tbody { @for d in &owner.datasets { (dataset_row(d)) } }
                    }
                }
            }
        }
        @if let Some(next) = &view.next {
            p.pager { a href={ "/?after=" (next) } { "more owners →" } }
        }
    };
    page("Owners", html! {}, body)
}

pub fn dataset(view: &DatasetPageView, limit: usize) -> Markup {
    let who = owner_name(&view.display_name, &view.owner_id);
    let d = &view.dataset;
    let crumbs = html! { a href="/" { (who) } " / " (d.dataset) };
    let body = html! {
        h1 { (d.dataset) }
        p.meta {
            (d.entries) " entries · " (bytes(d.code_bytes)) " of public codes · last publish " (d.last_publish)
            " · owner " span.mono { (view.owner_id) }
        }
        p.note { "Each thumbnail is the public decode of the entry's ambiguated code, fakes included: what anyone without a key sees." }
        @if view.entries.is_empty() {
            p.empty { "No entries on this page." }
        }
        ul.grid {
            @for e in &view.entries {
                li.card {
                    a href=(e.url) {
                        (thumbnail(&e.thumbnail, "public decode"))
                        span.id.mono title=(e.entry_id) { (short_entry(&e.entry_id)) }
                    }
                    span.meta { (e.width) "×" (e.height) " · " (bytes(e.code_bytes)) }
                    time datetime=(e.created) { (e.created.get(..10).unwrap_or(&e.created)) }
                    @if !e.label.is_empty() { span.label { (e.label) } }
                }
            }
        }
        @if let Some(next) = &view.next {
            p.pager { a href={ (dataset_url(&view.owner_id, &d.dataset)) "?after=" (next) "&limit=" (limit) } { "next page →" } }
        }
    };
    page(&d.dataset, crumbs, body)
}

pub fn entry(view: &EntryView) -> Markup {
    let who = owner_name(&view.display_name, &view.owner_id);
    let crumbs = html! {
        a href="/" { (who) } " / " a href=(view.dataset_url) { (view.dataset) } " / " span.mono { (short_entry(&view.entry_id)) }
    };
    let signature_class = if view.signature == "valid" { "ok" } else { "bad" };
    let body = html! {
        h1.mono { (view.entry_id) }
        div.entry {
            figure {
                (thumbnail(&view.thumbnail, "public decode"))
                figcaption { "Public decode (real and fake nonzeros): what anyone without a key sees." }
            }
            table.facts {
                tr { th { "owner" } td { (who) " " span.mono { (view.owner_id) } } }
                tr { th { "dataset" } td { a href=(view.dataset_url) { (view.dataset) } } }
                tr { th { "owner signature" } td { span class=(signature_class) { (view.signature) } } }
                tr { th { "model" } td { a href=(model_url(&view.model_id)) { (view.model_name) } " " span.mono { (short(&view.model_id)) } } }
                tr { th { "image" } td { (view.width) " × " (view.height) " px" } }
                tr { th { "created" } td { time datetime=(view.created) { (view.created) } } }
                @if !view.label.is_empty() { tr { th { "label" } td { (view.label) } } }
                tr { th { "code" } td {
                    (view.tiles) " tiles × " (view.maps) " maps of " (view.dim) " dims, "
                    (view.nonzeros_per_map) " nonzeros a map (real and fake), format v" (view.format_version) ", " (view.value_codec)
                } }
                tr { th { "public code" } td { a href=(view.code_url) download { "download (" (bytes(view.code_bytes)) ")" } } }
            }
        }
    };
    page(&format!("entry {}", short_entry(&view.entry_id)), crumbs, body)
}

pub fn model(view: &ModelView) -> Markup {
    let crumbs = html! { "model " (view.name) };
    let body = html! {
        h1 { (view.name) }
        table.facts {
            tr { th { "model id" } td.mono { (view.model_id) } }
            tr { th { "owner" } td.mono { (view.owner_id) } }
            tr { th { "tiles" } td { (view.tile_size) " × " (view.tile_size) " px, " (view.channels) " channels" } }
            tr { th { "code" } td { (view.maps) " maps of " (view.dim) " dims, k = " (view.k) ", " (view.k_fake) " fakes a map" } }
            @if !view.preview_k.is_empty() {
                tr { th { "preview tiers" } td { @for k in &view.preview_k { "k = " (k) " " } } }
            }
        }
        h2 { "Files" }
        table {
            thead { tr { th { "role" } th { "SHA-256" } th { "size" } } }
            tbody { @for f in &view.files { tr { td { (f.role) } td.mono { (f.sha256) } td.num { (bytes(f.size)) } } } }
        }
        h2 { "Manifest" }
        pre { (view.manifest) }
    };
    page(&view.name, crumbs, body)
}

pub fn error(status: u16, message: &str) -> Markup {
    page(
        "Error",
        html! {},
        html! {
            h1 { (status) }
            p { (message) }
            p { a href="/" { "home" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_naturally() {
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(2_624), "2.6 KB");
        assert_eq!(bytes(17_000_000), "17.0 MB");
    }

    #[test]
    fn entries_published_together_get_different_short_ids() {
        let a = "01a237b6-2585-776d-b5ca-e78c841632d9";
        let b = "01a237b6-207d-732b-81e6-bb4078b1f131";
        assert_eq!(short_entry(a), "841632d9");
        assert_ne!(short_entry(a), short_entry(b));
        assert_eq!(short_entry("abc"), "abc");
        assert_eq!(short("2a0bbd4ee4b1ea1c"), "2a0bbd4e");
    }

    #[test]
    fn owner_text_is_escaped() {
        let page = error(404, "<script>alert(1)</script>").into_string();
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(page.contains("&lt;script&gt;"));
    }
}
