// The dashboard's own script (no inline scripts: the Content-Security-Policy forbids them).
// - htmx requests carry the session's CSRF token (header X-CSRF-Token, from <meta name="csrf-token">).
// - The digit pad: a 32x32 drawing, scaled to fill its frame, reduced to 8x8 counts of set pixels per 4x4 block
//   (0..16), the way the scikit-learn digits were made from their normalised 32x32 bitmaps; the 64 values go
//   into the form's "pixels" field.
// - A chat form clears its message once the answer has been added.
(function () {
  "use strict";

  var GRID = 32; // drawing resolution
  var BLOCK = 4; // 32 / 8
  var OUT = 8;
  var BRUSH = 1.6; // brush radius, in drawing cells

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : null;
  }

  document.addEventListener("htmx:configRequest", function (event) {
    var token = csrfToken();
    if (token) {
      event.detail.headers["X-CSRF-Token"] = token;
    }
  });

  function DigitPad(pad) {
    this.pad = pad;
    this.canvas = pad.querySelector("#digit-canvas");
    this.preview = pad.querySelector("#digit-preview");
    this.field = document.getElementById(pad.getAttribute("data-digit-pad"));
    this.cells = new Uint8Array(GRID * GRID);
    this.drawing = false;
    this.last = null;
    this.touched = false;
    var self = this;
    this.canvas.addEventListener("pointerdown", function (e) { self.start(e); });
    this.canvas.addEventListener("pointermove", function (e) { self.move(e); });
    ["pointerup", "pointerleave", "pointercancel"].forEach(function (name) {
      self.canvas.addEventListener(name, function () { self.stop(); });
    });
    pad.querySelector("#digit-clear").addEventListener("click", function () { self.clear(); });
    pad.hidden = false;
    this.render();
  }

  DigitPad.prototype.cellAt = function (e) {
    var rect = this.canvas.getBoundingClientRect();
    return {
      x: ((e.clientX - rect.left) / rect.width) * GRID,
      y: ((e.clientY - rect.top) / rect.height) * GRID,
    };
  };

  DigitPad.prototype.start = function (e) {
    e.preventDefault();
    if (this.canvas.setPointerCapture && e.pointerId !== undefined) {
      try { this.canvas.setPointerCapture(e.pointerId); } catch (ignored) { /* not capturable */ }
    }
    this.drawing = true;
    this.last = this.cellAt(e);
    this.paint(this.last);
    this.update();
  };

  DigitPad.prototype.move = function (e) {
    if (!this.drawing) {
      return;
    }
    var at = this.cellAt(e);
    var dx = at.x - this.last.x;
    var dy = at.y - this.last.y;
    var steps = Math.max(1, Math.ceil(Math.sqrt(dx * dx + dy * dy) * 2));
    for (var i = 1; i <= steps; i++) {
      this.paint({ x: this.last.x + (dx * i) / steps, y: this.last.y + (dy * i) / steps });
    }
    this.last = at;
    this.update();
  };

  DigitPad.prototype.stop = function () {
    this.drawing = false;
    this.last = null;
  };

  DigitPad.prototype.paint = function (at) {
    var r = Math.ceil(BRUSH);
    for (var y = Math.floor(at.y) - r; y <= Math.floor(at.y) + r; y++) {
      for (var x = Math.floor(at.x) - r; x <= Math.floor(at.x) + r; x++) {
        if (x < 0 || y < 0 || x >= GRID || y >= GRID) {
          continue;
        }
        var cx = x + 0.5 - at.x;
        var cy = y + 0.5 - at.y;
        if (cx * cx + cy * cy <= BRUSH * BRUSH) {
          this.cells[y * GRID + x] = 1;
        }
      }
    }
    this.touched = true;
  };

  // The drawing scaled to fill the 32x32 frame (aspect kept, centred), as the digits' bitmaps were normalised.
  DigitPad.prototype.normalized = function () {
    var minX = GRID, minY = GRID, maxX = -1, maxY = -1;
    for (var i = 0; i < this.cells.length; i++) {
      if (this.cells[i]) {
        var cx = i % GRID, cy = Math.floor(i / GRID);
        minX = Math.min(minX, cx); maxX = Math.max(maxX, cx);
        minY = Math.min(minY, cy); maxY = Math.max(maxY, cy);
      }
    }
    var out = new Uint8Array(GRID * GRID);
    if (maxX < 0) {
      return out;
    }
    var w = maxX - minX + 1, h = maxY - minY + 1;
    var scale = Math.max(w, h) / GRID; // source cells per target cell
    var offX = minX - (GRID * scale - w) / 2, offY = minY - (GRID * scale - h) / 2;
    for (var y = 0; y < GRID; y++) {
      for (var x = 0; x < GRID; x++) {
        var sx = Math.floor(offX + (x + 0.5) * scale), sy = Math.floor(offY + (y + 0.5) * scale);
        if (sx >= 0 && sy >= 0 && sx < GRID && sy < GRID && this.cells[sy * GRID + sx]) {
          out[y * GRID + x] = 1;
        }
      }
    }
    return out;
  };

  DigitPad.prototype.counts = function () {
    var cells = this.normalized();
    var out = [];
    for (var by = 0; by < OUT; by++) {
      for (var bx = 0; bx < OUT; bx++) {
        var n = 0;
        for (var y = by * BLOCK; y < (by + 1) * BLOCK; y++) {
          for (var x = bx * BLOCK; x < (bx + 1) * BLOCK; x++) {
            n += cells[y * GRID + x];
          }
        }
        out.push(n);
      }
    }
    return out;
  };

  DigitPad.prototype.update = function () {
    var values = this.counts();
    var rows = [];
    for (var i = 0; i < OUT; i++) {
      rows.push(values.slice(i * OUT, (i + 1) * OUT).join(" "));
    }
    this.field.value = rows.join("\n");
    this.render();
  };

  DigitPad.prototype.clear = function () {
    this.cells.fill(0);
    this.touched = false;
    this.field.value = "";
    this.render();
  };

  DigitPad.prototype.render = function () {
    var ctx = this.canvas.getContext("2d");
    var size = this.canvas.width / GRID;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    ctx.fillStyle = "#1b2b4b";
    for (var i = 0; i < this.cells.length; i++) {
      if (this.cells[i]) {
        ctx.fillRect((i % GRID) * size, Math.floor(i / GRID) * size, size, size);
      }
    }
    ctx.strokeStyle = "#d8dee9";
    for (var line = BLOCK; line < GRID; line += BLOCK) {
      ctx.beginPath();
      ctx.moveTo(line * size, 0);
      ctx.lineTo(line * size, this.canvas.height);
      ctx.moveTo(0, line * size);
      ctx.lineTo(this.canvas.width, line * size);
      ctx.stroke();
    }
    var p = this.preview.getContext("2d");
    var cell = this.preview.width / OUT;
    var values = this.counts();
    for (var j = 0; j < values.length; j++) {
      var shade = 255 - Math.round((values[j] / 16) * 255);
      p.fillStyle = "rgb(" + shade + "," + shade + "," + shade + ")";
      p.fillRect((j % OUT) * cell, Math.floor(j / OUT) * cell, cell, cell);
    }
  };

  function clearAfterSend(form) {
    var name = form.getAttribute("data-clear-on-send");
    form.addEventListener("htmx:afterRequest", function (event) {
      if (event.detail.successful && form.elements[name]) {
        form.elements[name].value = "";
      }
    });
  }

  function init() {
    var pad = document.querySelector("[data-digit-pad]");
    if (pad) {
      new DigitPad(pad);
    }
    document.querySelectorAll("form[data-clear-on-send]").forEach(clearAfterSend);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
