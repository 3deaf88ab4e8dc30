/* The offline viewer (VIEWER/viewer.js): turns the page's plain list of images into a
   one-image-at-a-time viewer. Reads the list from the page itself: nothing is fetched
   (browsers block fetch/XHR of file:// pages), nothing leaves the computer. */
(function () {
  "use strict";
  var root = document.getElementById("viewer");
  var list = document.getElementById("list");
  if (!root || !list) { return; }
  var series = [];
  var sections = list.querySelectorAll("section.series");
  for (var i = 0; i < sections.length; i++) {
    var links = sections[i].querySelectorAll("ol.images a");
    if (!links.length) { continue; }
    var images = [];
    for (var j = 0; j < links.length; j++) { images.push(links[j].getAttribute("href")); }
    var title = sections[i].querySelector(".series-title");
    series.push({ title: title ? title.textContent : String(series.length + 1), images: images });
  }
  if (!series.length) { return; }

  var picker = document.getElementById("series-picker");
  var view = document.getElementById("view");
  var slider = document.getElementById("slider");
  var counter = document.getElementById("counter");
  var template = root.getAttribute("data-counter") || "{n} / {total}";
  var current = 0;
  var index = 0;
  var preload = new Image();

  for (var k = 0; k < series.length; k++) {
    var option = document.createElement("option");
    option.value = String(k);
    option.textContent = series[k].title;  // text, never markup
    picker.appendChild(option);
  }

  function show(s, n) {
    var images = series[s].images;
    n = Math.max(0, Math.min(images.length - 1, n));
    current = s;
    index = n;
    view.src = images[n];
    picker.value = String(s);
    slider.max = String(images.length);
    slider.value = String(n + 1);
    counter.textContent = template.replace("{n}", String(n + 1)).replace("{total}", String(images.length));
    if (n + 1 < images.length) { preload.src = images[n + 1]; }
  }
  function step(by) { show(current, index + by); }

  document.getElementById("prev").addEventListener("click", function () { step(-1); });
  document.getElementById("next").addEventListener("click", function () { step(1); });
  slider.addEventListener("input", function () { show(current, parseInt(slider.value, 10) - 1); });
  picker.addEventListener("change", function () { show(parseInt(picker.value, 10), 0); });
  document.addEventListener("keydown", function (e) {
    if (e.target === picker || e.altKey || e.ctrlKey || e.metaKey) { return; }
    var moves = { ArrowRight: 1, ArrowDown: 1, PageDown: 10, ArrowLeft: -1, ArrowUp: -1, PageUp: -10 };
    if (e.key === "Home") { show(current, 0); }
    else if (e.key === "End") { show(current, series[current].images.length - 1); }
    else if (Object.prototype.hasOwnProperty.call(moves, e.key)) { step(moves[e.key]); }
    else { return; }
    e.preventDefault();
  });
  view.parentNode.addEventListener("wheel", function (e) {
    if (e.deltaY === 0) { return; }
    e.preventDefault();
    step(e.deltaY > 0 ? 1 : -1);
  }, { passive: false });
  var startX = null;
  view.addEventListener("pointerdown", function (e) { startX = e.clientX; });
  view.addEventListener("pointerup", function (e) {
    if (startX === null) { return; }
    var dx = e.clientX - startX;
    startX = null;
    if (Math.abs(dx) > 40) { step(dx < 0 ? 1 : -1); }
  });
  view.addEventListener("dragstart", function (e) { e.preventDefault(); });

  list.hidden = true;
  root.hidden = false;
  show(0, 0);
}());
