/* Courier portal viewer: keyboard, wheel, swipe, slider, drag windowing, zoom and pan.
   The page works without this file (links to every image and preset); this only makes
   the same moves faster. No inline code, no eval, nothing from another origin. */
(function () {
  "use strict";
  var root = document.getElementById("viewer");
  if (!root) { return; }
  var stage = document.getElementById("view-stage");
  var img = document.getElementById("view-image");
  var slider = document.getElementById("view-slider");
  var prevLink = document.getElementById("view-prev");
  var nextLink = document.getElementById("view-next");
  var numberText = document.getElementById("view-number");
  var positionText = document.getElementById("view-position");
  var windowText = document.getElementById("view-window");
  var notDrawn = document.getElementById("view-not-drawn");
  var base = root.dataset.base;
  var count = parseInt(root.dataset.count, 10);
  var n = parseInt(root.dataset.n, 10);
  var suffix = root.dataset.suffix || "";
  var positions = (root.dataset.positions || "").split(",");
  var texts = { image: root.dataset.textImage, position: root.dataset.textPosition, window: root.dataset.textWindow };
  function num(v) { return v === "" || v === undefined ? null : Number(v); }
  var centre = num(root.dataset.centre), width = num(root.dataset.width);
  var autoCentre = num(root.dataset.autoCentre), autoWidth = num(root.dataset.autoWidth);
  var pre = {};           // image number -> Image, loaded ahead (this window only)
  var shown = n;          // the number whose picture is on screen
  var want = n;           // the number asked for last
  var direction = 1;
  var zoom = 1, panX = 0, panY = 0;
  var ZOOMS = [1, 1.5, 2, 3, 4, 6];

  document.getElementById("view-tools").hidden = false;
  stage.tabIndex = 0;
  stage.setAttribute("aria-describedby", "view-help");

  function fill(template, values) {
    return template.replace(/\{(\w+)\}/g, function (_m, k) { return values[k]; });
  }
  function imageUrl(i) { return base + "/" + i + "/image" + suffix; }
  function pageUrl(i) { return base + "/" + i + suffix; }

  // Pictures asked for ahead, at most MAX_PENDING at a time (a held key must not queue
  // hundreds of requests that are stale before they arrive); the newest one that
  // arrives on the way to the wanted image is shown at once.
  var MAX_PENDING = 4;
  function pending() {
    var n = 0;
    Object.keys(pre).forEach(function (k) { if (!pre[k].done) { n += 1; } });
    return n;
  }
  function between(i) {
    if (want > shown) { return i > shown && i <= want; }
    if (want < shown) { return i < shown && i >= want; }
    return i === want && img !== pre[i];
  }
  var tries = {};
  function request(i) {
    if (i < 1 || i > count || pre[i] || pending() >= MAX_PENDING) { return; }
    var e = new Image();
    e.decoding = "async";
    e.done = false;
    pre[i] = e;
    function settle() {
      if (e.done) { return; }
      e.done = true;
      if (pre[i] !== e) { return; }  // dropped meanwhile
      if (e.naturalWidth > 0 && between(i)) { swap(e, i); }
      load();
    }
    e.addEventListener("load", settle);
    e.addEventListener("error", function () {
      settle();
      // A 503 (every renderer busy) is worth asking again, a few times at most.
      tries[i] = (tries[i] || 0) + 1;
      if (tries[i] <= 3) {
        setTimeout(function () { if (pre[i] === e) { delete pre[i]; load(); } }, 2000);
      }
    });
    e.src = imageUrl(i);
  }
  function drop(all) {
    Object.keys(pre).forEach(function (k) {
      var e = pre[k];
      if (all || Math.abs(k - want) > 8) {
        delete pre[k];
        if (!e.done) { e.done = true; e.src = ""; }
      }
    });
  }
  function load() {
    drop(false);
    var e = pre[want];
    if (e && e.done && e.naturalWidth > 0 && shown !== want) { swap(e, want); }
    request(want);
    for (var d = 1; d <= 4; d++) { request(want + d * direction); }
  }
  function applyTransform() {
    img.style.transform = zoom === 1 ? "" : "translate(" + panX + "px, " + panY + "px) scale(" + zoom + ")";
    stage.classList.toggle("zoomed", zoom > 1);
  }
  function swap(e, i) {
    e.id = "view-image";
    e.alt = fill(texts.image, { n: i, count: count });
    if (e !== img) {
      stage.replaceChild(e, img);
      img = e;
    }
    applyTransform();
    shown = i;
    if (notDrawn) { notDrawn.remove(); notDrawn = null; }
  }
  function links() {
    var p = want > 1 ? pageUrl(want - 1) : null;
    var q = want < count ? pageUrl(want + 1) : null;
    [[prevLink, p], [nextLink, q]].forEach(function (pair) {
      if (pair[1]) { pair[0].href = pair[1]; pair[0].removeAttribute("aria-disabled"); }
      else { pair[0].removeAttribute("href"); pair[0].setAttribute("aria-disabled", "true"); }
    });
    document.querySelectorAll("a.preset").forEach(function (a) {
      var id = a.dataset.preset;
      a.href = base + "/" + want + (id === "auto" ? "" : "?w=" + id);
    });
    history.replaceState(null, "", pageUrl(want));
  }
  function caption() {
    numberText.textContent = fill(texts.image, { n: want, count: count });
    var pos = positions[want - 1];
    positionText.textContent = pos ? " · " + fill(texts.position, { position: pos }) : "";
    slider.value = String(want);
  }
  function show(i) {
    i = Math.max(1, Math.min(count, i));
    if (i === want) { return; }
    direction = i > want ? 1 : -1;
    want = i;
    caption();
    links();
    load();
  }
  function setWindow(newSuffix, c, w, label) {
    suffix = newSuffix;
    centre = c; width = w;
    drop(true);
    windowText.textContent = label ? " · " + label : "";
    links();
    shown = -1;
    load();
  }

  // Navigation: keys, wheel, slider, links, swipe.
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (t === slider || (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT"))) { return; }
    if (ev.altKey || ev.ctrlKey || ev.metaKey) { return; }
    var k = ev.key, step = null;
    if (k === "ArrowRight" || k === "ArrowDown" || k === "PageDown") { step = 1; }
    else if (k === "ArrowLeft" || k === "ArrowUp" || k === "PageUp") { step = -1; }
    if (document.documentElement.dir === "rtl" && (k === "ArrowRight" || k === "ArrowLeft")) { step = -step; }
    if (step !== null) { ev.preventDefault(); show(want + step); return; }
    if (k === "Home") { ev.preventDefault(); show(1); }
    else if (k === "End") { ev.preventDefault(); show(count); }
    else if (k === "+" || k === "=") { zoomBy(1); }
    else if (k === "-") { zoomBy(-1); }
    else if (k === "0") { fit(); }
  });
  var wheelSum = 0;
  stage.addEventListener("wheel", function (ev) {
    ev.preventDefault();
    if (ev.ctrlKey) { zoomBy(ev.deltaY < 0 ? 1 : -1); return; }
    wheelSum += ev.deltaY;
    while (Math.abs(wheelSum) >= 40) {
      show(want + (wheelSum > 0 ? 1 : -1));
      wheelSum -= wheelSum > 0 ? 40 : -40;
    }
  }, { passive: false });
  slider.addEventListener("input", function () { show(parseInt(slider.value, 10)); });
  prevLink.addEventListener("click", function (ev) { ev.preventDefault(); show(want - 1); });
  nextLink.addEventListener("click", function (ev) { ev.preventDefault(); show(want + 1); });

  // Presets.
  document.querySelectorAll("a.preset").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      ev.preventDefault();
      document.querySelectorAll("a.preset").forEach(function (b) { b.removeAttribute("aria-current"); });
      a.setAttribute("aria-current", "true");
      var id = a.dataset.preset;
      var c = num(a.dataset.centre), w = num(a.dataset.width);
      if (id === "auto") { c = autoCentre; w = autoWidth; }
      if (w === 0) { c = null; w = null; }
      setWindow(id === "auto" ? "" : "?w=" + id, c, w, "");
    });
  });

  // Zoom and pan.
  function zoomBy(d) {
    var i = ZOOMS.indexOf(zoom);
    i = Math.max(0, Math.min(ZOOMS.length - 1, (i < 0 ? 0 : i) + d));
    zoom = ZOOMS[i];
    if (zoom === 1) { panX = 0; panY = 0; }
    applyTransform();
  }
  function fit() { zoom = 1; panX = 0; panY = 0; applyTransform(); }
  document.getElementById("view-zoom-in").addEventListener("click", function () { zoomBy(1); });
  document.getElementById("view-zoom-out").addEventListener("click", function () { zoomBy(-1); });
  document.getElementById("view-fit").addEventListener("click", fit);

  // Drag: windowing with a mouse (or pen), pan when zoomed, swipe to change image by touch.
  var drag = null, windowTimer = null;
  stage.addEventListener("pointerdown", function (ev) {
    drag = { x: ev.clientX, y: ev.clientY, type: ev.pointerType, panX: panX, panY: panY, c: centre, w: width };
    stage.setPointerCapture(ev.pointerId);
    if (ev.pointerType !== "touch" && zoom === 1 && centre !== null) { stage.classList.add("windowing"); }
    ev.preventDefault();
  });
  stage.addEventListener("pointermove", function (ev) {
    if (!drag) { return; }
    var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (zoom > 1) { panX = drag.panX + dx; panY = drag.panY + dy; applyTransform(); return; }
    if (drag.type === "touch" || drag.c === null) { return; }
    var scale = Math.max(1, drag.w / 200);
    var w = Math.max(1, Math.round(drag.w + dx * scale));
    var c = Math.round(drag.c + dy * scale);
    centre = c; width = w;
    windowText.textContent = " · " + fill(texts.window, { centre: c, width: w });
    if (!windowTimer) {
      windowTimer = setTimeout(function () {
        windowTimer = null;
        document.querySelectorAll("a.preset").forEach(function (b) { b.removeAttribute("aria-current"); });
        setWindow("?c=" + centre + "&ww=" + width, centre, width, windowText.textContent.slice(3));
      }, 120);
    }
  });
  function end(ev) {
    if (!drag) { return; }
    var dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (drag.type === "touch" && zoom === 1 && Math.abs(dx) > 40 && Math.abs(dx) > Math.abs(dy)) {
      var step = dx < 0 ? 1 : -1;
      if (document.documentElement.dir === "rtl") { step = -step; }
      show(want + step);
    }
    stage.classList.remove("windowing");
    drag = null;
  }
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);

  pre[n] = img;
  img.done = true;
  load();
}());
