// The gallery's only script: records on every <img> how wide the image really
// decoded (data-natural-width), 0 for one that failed to load, so a browser
// test (or a curious reader of the DOM) can tell a shown image from a broken one.
"use strict";

// Loaded without defer, before any <img> exists: a capture listener sees every
// image's error, even one that fails before the window's load.
document.addEventListener(
  "error",
  function (event) {
    if (event.target instanceof HTMLImageElement) {
      event.target.setAttribute("data-natural-width", "0");
    }
  },
  true
);

window.addEventListener("load", function () {
  var images = document.querySelectorAll("img");
  for (var i = 0; i < images.length; i++) {
    images[i].setAttribute("data-natural-width", String(images[i].naturalWidth));
  }
});
