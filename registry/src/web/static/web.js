// The registry's web view: swaps a thumbnail's placeholder for the image once
// the registry has rendered it, and records each image's natural width in
// data-natural-width (0 when it failed), which the browser test reads.
"use strict";

function markLoaded(img) {
  img.dataset.naturalWidth = String(img.naturalWidth);
}

function watch(img) {
  if (img.complete) {
    markLoaded(img);
  }
  img.addEventListener("load", () => markLoaded(img));
  img.addEventListener("error", () => { img.dataset.naturalWidth = "0"; });
}

function poll(img) {
  const url = img.dataset.thumbnail;
  let tries = 0;
  const timer = setInterval(async () => {
    tries += 1;
    try {
      const response = await fetch(url, { cache: "no-store" });
      if (response.status === 200) {
        clearInterval(timer);
        img.classList.remove("pending");
        img.src = url;
      } else if (response.status !== 202 || tries > 300) {
        clearInterval(timer);
        img.classList.remove("pending");
        img.src = "/static/unavailable.svg";
      }
    } catch (_) {
      if (tries > 300) clearInterval(timer);
    }
  }, 1000);
}

function start() {
  for (const img of document.querySelectorAll("img")) {
    watch(img);
    if (img.dataset.thumbnail) poll(img);
  }
}

if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", start);
} else {
  start();
}
