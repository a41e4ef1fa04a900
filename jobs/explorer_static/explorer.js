/* vip2scan explorer: plain JavaScript, no libraries, no network.
 *
 * Two ways to get data, one page. Static export (file:// works): classic scripts calling
 * V2S.setMeta / setIndex / setChunk (a page opened from file:// may load scripts but not fetch
 * files): data/meta.js with the page, data/index.js (the bounded table set) when the table is
 * first shown, data/obj-NNNNN.js (a hash bucket of URIs) when an image is opened.
 * Served (vip2scan explore OUT --serve, meta.api set): each table page from api/rows, each
 * object from api/object, pictures from api/picture, answered over the whole lake.
 * Untrusted text (object names, error messages) only ever goes into textContent.
 */
(function () {
  "use strict";

  var V2S = window.V2S = { chunks: {}, timing: { start: performance.now() } };
  V2S.setMeta = function (meta) { V2S.meta = meta; };
  V2S.setIndex = function (raw) { V2S.rawIndex = raw; };
  V2S.setChunk = function (k, rows) { V2S.chunks[k] = rows; };

  var ERROR = 1, ANOMALOUS = 2, RENDERED = 4, HAS_IMAGE = 8; // bits of index.f
  var SAFE_LINK = /^(https?|s3|gs|gcs|az|abfs|abfss|file):/i;
  var state = { smin: null, smax: null, status: "", prefix: "", night: "", model: "", rendered: false,
                sortKey: "score", sortDir: -1, page: 0, size: 50, order: null, total: 0, rows: [], ticket: 0 };
  var scripts = {};
  var DISPLAY_SIDE = 320;

  // ------------------------------------------------------------------ helpers
  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value === null || value === undefined) return;
      if (name === "text") node.textContent = value;
      else if (name === "className") node.className = value;
      else if (name === "style") node.style.cssText = value;
      else node.setAttribute(name, value);
    });
    (children || []).forEach(function (child) {
      if (child !== null && child !== undefined) {
        node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
      }
    });
    return node;
  }

  function svg(tag, attrs, children) {
    var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs || {}).forEach(function (name) {
      if (name === "text") node.textContent = attrs[name];
      else node.setAttribute(name, attrs[name]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }
  function fixed(x, digits) { return isNaN(x) ? "" : x.toFixed(digits); }
  function percent(x, digits) { return isNaN(x) ? "" : (100 * x).toFixed(digits) + " %"; }
  function pad5(k) { return ("0000" + k).slice(-5); }
  function served() { return !!V2S.meta.api; }
  function mark(name) { V2S.timing[name] = performance.now() - V2S.timing.start; }
  function imageLink(row) { return "#image/" + (served() ? encodeURIComponent(row.uri) : row.id); }
  function picture(render, kind) {
    if (render.name) return "img/" + render.name + (kind === "map" ? "-map" : "") + ".png";
    return kind === "map" ? render.map : render.src;
  }
  function getJson(url) {
    return fetch(url).then(function (r) {
      return r.json().then(function (body) { if (!r.ok) throw new Error(body.error || r.statusText); return body; });
    });
  }
  function sig(x) { return x === null || x === undefined ? "" : String(+(+x).toPrecision(5)); } // 0.5067054569 -> 0.50671
  function say(text) { $("status-line").textContent = text; }

  function loadScript(src) {
    if (!scripts[src]) {
      scripts[src] = new Promise(function (resolve, reject) {
        var node = document.createElement("script");
        node.src = src;
        node.onload = resolve;
        node.onerror = function () { reject(new Error("cannot load " + src)); };
        document.head.appendChild(node);
      });
    }
    return scripts[src];
  }

  function fail(err) {
    say("error: " + err.message);
    console.error(err);
  }

  function uriOf(i) { return V2S.meta.roots[V2S.index.root[i]] + V2S.index.k[i]; }

  // An object's URI as a link: each path segment percent-encoded, so '#', '?' and '%3C' in a
  // key stay part of the file name instead of starting a fragment, a query or an escape.
  function linkTarget(uri) {
    var m = /^([a-z][a-z0-9+.-]*:\/\/[^\/]*)(.*)$/i.exec(uri);
    if (!m) return uri;
    return m[1] + m[2].split("/").map(encodeURIComponent).join("/");
  }

  function objectLink(uri) {
    if (!SAFE_LINK.test(uri)) return el("span", { className: "uri-title", text: uri });
    return el("a", { href: linkTarget(uri), className: "uri-title", text: uri, rel: "noopener" });
  }

  // One shell word that bash or zsh reads back as s, as jobs/terminal.py shell_word does:
  // 'single quotes', or $'...' with escapes when s holds control characters.
  var SHELL_SAFE = /^[A-Za-z0-9_@%+=:,.\/-]+$/;
  var SHELL_UNSAFE = /[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/;
  var SHELL_NAMED = { "\n": "\\n", "\r": "\\r", "\t": "\\t" };
  function shellWord(s) {
    if (s === "") return "''";
    if (SHELL_SAFE.test(s)) return s;
    if (!SHELL_UNSAFE.test(s)) return "'" + s.replace(/'/g, "'\"'\"'") + "'";
    return "$'" + s.replace(/[\\']/g, "\\$&").replace(new RegExp(SHELL_UNSAFE.source, "g"), function (c) {
      var code = c.charCodeAt(0), hex = code.toString(16);
      if (SHELL_NAMED[c]) return SHELL_NAMED[c];
      return code < 0x80 ? "\\x" + ("0" + hex).slice(-2) : "\\u" + ("000" + hex).slice(-4);
    }) + "'";
  }

  // ------------------------------------------------------------------ index
  function ensureIndex() {
    if (V2S.index) return Promise.resolve(V2S.index);
    say("loading " + V2S.meta.n_rows + " rows ...");
    return loadScript("data/index.js").then(function () {
      var raw = V2S.rawIndex, n = raw.k.length;
      var ix = { n: n, k: raw.k, root: Int32Array.from(raw.root), pre: Int32Array.from(raw.pre),
                 night: Int32Array.from(raw.night), model: Int32Array.from(raw.model),
                 f: Uint8Array.from(raw.f), sc: new Float64Array(n), mp: new Float64Array(n),
                 ar: new Float64Array(n) };
      for (var i = 0; i < n; i++) {
        ix.sc[i] = raw.sc[i] === null ? NaN : raw.sc[i] / 1e9;
        ix.mp[i] = raw.mp[i] === null ? NaN : raw.mp[i] / 1e4;
        ix.ar[i] = raw.ar[i] === null ? NaN : raw.ar[i] / 1e5;
      }
      ix.er = {};  // error row -> its reason
      (raw.er || []).forEach(function (pair) { ix.er[pair[0]] = pair[1]; });
      ix.hn = {};  // row -> the other nights it was scanned on (its current row is newer)
      (raw.hn || []).forEach(function (pair) { ix.hn[pair[0]] = pair[1]; });
      ix.im = {};  // row -> the base name of its pre-rendered pictures
      (raw.im || []).forEach(function (pair) { ix.im[pair[0]] = pair[1]; });
      ix.b = raw.b;
      ix.byUri = null;
      V2S.rawIndex = null;
      V2S.index = ix;
      V2S.timing.indexMs = performance.now() - V2S.timing.start;
      return ix;
    });
  }

  function matches(ix, i) {
    var f = ix.f[i];
    if (state.status === "error" && !(f & ERROR)) return false;
    if (state.status === "ok" && (f & ERROR)) return false;
    if (state.status === "anomalous" && !(f & ANOMALOUS)) return false;
    if (state.status === "normal" && (f & (ERROR | ANOMALOUS))) return false;
    if (state.rendered && !(f & RENDERED)) return false;
    if (state.prefix !== "" && ix.pre[i] !== +state.prefix) return false;
    if (state.night !== "" && ix.night[i] !== +state.night &&
        !(ix.hn[i] && ix.hn[i].indexOf(+state.night) >= 0)) return false;
    if (state.model !== "" && ix.model[i] !== +state.model) return false;
    if (state.smin !== null && !(ix.sc[i] >= state.smin)) return false;
    if (state.smax !== null && !(ix.sc[i] <= state.smax)) return false;
    return true;
  }

  function sortKeyOf(ix, key) {
    if (key === "score") return ix.sc;
    if (key === "mp") return ix.mp;
    if (key === "area") return ix.ar;
    if (key === "prefix") return ix.pre;
    if (key === "night") return ix.night;
    if (key === "model") return ix.model;
    if (key === "status") {
      var s = new Float64Array(ix.n);
      for (var i = 0; i < ix.n; i++) s[i] = ix.f[i] & ERROR ? 2 : (ix.f[i] & ANOMALOUS ? 0 : 1);
      return s;
    }
    return null; // "uri": the index is in URI order already
  }

  function applyFilters() {
    var ix = V2S.index, ids = [];
    for (var i = 0; i < ix.n; i++) if (matches(ix, i)) ids.push(i);
    var values = sortKeyOf(ix, state.sortKey), dir = state.sortDir;
    ids.sort(function (a, b) {
      if (values) {
        var va = values[a], vb = values[b];
        var na = va !== va, nb = vb !== vb; // NaN (no score) sorts last either way
        if (na !== nb) return na ? 1 : -1;
        if (!na && va !== vb) return va < vb ? -dir : dir;
      }
      return (a - b) * (values ? 1 : dir);
    });
    state.order = Int32Array.from(ids);
    var pages = Math.max(1, Math.ceil(ids.length / state.size));
    if (state.page >= pages) state.page = pages - 1;
  }

  // ------------------------------------------------------------------ table
  function readFilters() {
    function num(id) { var v = $(id).value.trim(); return v === "" || isNaN(+v) ? null : +v; }
    state.smin = num("f-smin");
    state.smax = num("f-smax");
    state.status = $("f-status").value;
    state.prefix = $("f-prefix").value;
    state.night = $("f-night").value;
    state.model = $("f-model").value;
    state.rendered = $("f-rendered").checked;
  }

  function writeFilters() {
    $("f-smin").value = state.smin === null ? "" : state.smin;
    $("f-smax").value = state.smax === null ? "" : state.smax;
    $("f-status").value = state.status;
    $("f-prefix").value = state.prefix;
    $("f-night").value = state.night;
    $("f-model").value = state.model;
    $("f-rendered").checked = state.rendered;
  }

  // The filters and the sort live in the URL (#images?status=error&night=0...): a reload or a
  // shared link shows the same list. Prefix, night and model are indexes into meta's lists.
  var URL_KEYS = ["smin", "smax", "status", "prefix", "night", "model", "rendered", "sort", "dir"];

  function filterQuery() {
    var parts = [];
    URL_KEYS.forEach(function (key) {
      var value = key === "sort" ? (state.sortKey === "score" ? "" : state.sortKey)
        : key === "dir" ? (state.sortDir === -1 ? "" : String(state.sortDir))
        : key === "rendered" ? (state.rendered ? "1" : "") : state[key];
      if (value !== null && value !== "") parts.push(key + "=" + encodeURIComponent(value));
    });
    return parts.length ? "?" + parts.join("&") : "";
  }

  function readQuery(query) {
    var values = {};
    query.split("&").forEach(function (pair) {
      var at = pair.indexOf("=");
      if (at > 0) values[pair.slice(0, at)] = decodeURIComponent(pair.slice(at + 1));
    });
    function num(v) { return v === undefined || v === "" || isNaN(+v) ? null : +v; }
    state.smin = num(values.smin);
    state.smax = num(values.smax);
    ["status", "prefix", "night", "model"].forEach(function (key) { state[key] = values[key] || ""; });
    state.rendered = values.rendered === "1";
    state.sortKey = values.sort || "score";
    state.sortDir = values.dir ? (+values.dir > 0 ? 1 : -1) : -1;
  }

  function keepInUrl() { history.replaceState(null, "", "#images" + filterQuery()); }

  function thumb(row) {
    if (!row.pic) return null;
    if (row.f & HAS_IMAGE) return el("img", { src: "img/" + row.pic + ".png", alt: "image " + row.id });
    if (row.f & RENDERED) return el("img", { src: "img/" + row.pic + "-map.png", alt: "map " + row.id });
    return null;
  }

  // One row of the static table set as the server sends its rows.
  function rowOf(i) {
    var ix = V2S.index;
    return { id: i, uri: uriOf(i), key: ix.k[i], pre: ix.pre[i], night: ix.night[i], model: ix.model[i],
             f: ix.f[i], sc: ix.sc[i], mp: ix.mp[i], ar: ix.ar[i], reason: ix.er[i] || "", pic: ix.im[i] || null };
  }

  function number(x) { return x === null || x === undefined ? NaN : x; }

  // Objects of the whole lake matching the prefix, night and status filters (meta.cube), for
  // the static export's subset; null when another filter is set.
  function lakeMatches() {
    if (state.smin !== null || state.smax !== null || state.model !== "" || state.rendered) return null;
    var classes = { "": [0, 1, 2], ok: [0, 1], anomalous: [1], normal: [0], error: [2] }[state.status];
    var night = state.night === "" ? -1 : +state.night, n = 0;
    V2S.meta.cube.forEach(function (c) {
      if (c[1] === night && (state.prefix === "" || c[0] === +state.prefix) && classes.indexOf(c[2]) >= 0) n += c[3];
    });
    return n;
  }

  function statusCell(f) {
    if (f & ERROR) return el("td", { className: "status-error", text: "error" });
    if (f & ANOMALOUS) return el("td", { className: "status-anomalous", text: "anomalous" });
    return el("td", { text: "ok" });
  }

  function renderTable(rows) {
    var meta = V2S.meta, body = clear(document.querySelector("#table tbody"));
    var total = state.total, start = state.page * state.size;
    var stop = Math.min(total, start + state.size), frag = document.createDocumentFragment();
    state.rows = rows;
    rows.forEach(function (r) {
      var row = el("tr", { "data-link": imageLink(r) }, [
        el("td", {}, [thumb(r)]),
        el("td", { className: "uri", text: r.key }),
        el("td", { text: meta.prefixes[r.pre] }),
        el("td", { text: meta.nights[r.night] }),
        statusCell(r.f),
        el("td", { className: "num", text: fixed(number(r.sc), 4) }),
        el("td", { className: "num", text: fixed(number(r.mp), 3) }),
        el("td", { className: "num", text: percent(number(r.ar), 2) }),
        el("td", { text: meta.models[r.model] }),
        el("td", { className: "reason", text: r.reason || "" })
      ]);
      frag.appendChild(row);
    });
    body.appendChild(frag);
    var pages = Math.max(1, Math.ceil(total / state.size));
    var scope = served() ? " (" + meta.n_rows + " objects, all of them)" : meta.subset
      ? " in the table set (" + meta.table_rows + " of " + meta.n_rows + " objects)" : " (" + meta.n_rows + " objects)";
    $("p-info").textContent = (total ? (start + 1) + "-" + stop : "0") + " of " + total +
      " matching" + scope + " · page " + (state.page + 1) + " of " + pages;
    var lake = !served() && meta.subset ? lakeMatches() : null;
    $("subset-note").hidden = served() || !meta.subset;
    $("subset-note").textContent = meta.subset ? meta.table_rows + " of " + meta.n_rows + " objects: the most anomalous " +
      "overall and per prefix, and errors" + (lake !== null ? "; " + lake + " objects of the whole lake match these filters" : "") +
      "; every object: " + "vip2scan explore " + shellWord(meta.out) + " --serve" : "";
    $("p-prev").disabled = $("p-first").disabled = state.page === 0;
    $("p-next").disabled = $("p-last").disabled = state.page >= pages - 1;
    document.querySelectorAll("#table th[data-sort]").forEach(function (th) {
      th.className = th.getAttribute("data-sort") === state.sortKey
        ? (state.sortDir > 0 ? "sorted-asc" : "sorted-desc") : "";
    });
    if (V2S.timing.tableMs === undefined) mark("tableMs");
    mark("answeredMs");
    say("table ready in " + Math.round(V2S.timing.tableMs) + " ms after the page started");
  }

  function refreshTable(resetPage) {
    if (resetPage) state.page = 0;
    var asked = performance.now(), ticket = ++state.ticket;
    function done(rows) {
      if (ticket !== state.ticket) return;  // a newer question is on its way: drop this answer
      renderTable(rows);
      V2S.timing.lastQueryMs = performance.now() - asked;
    }
    if (served()) {
      var query = filterQuery();
      query += (query ? "&" : "?") + "page=" + state.page + "&size=" + state.size;
      return getJson("api/rows" + query).then(function (answer) {
        state.total = answer.total;
        var pages = Math.max(1, Math.ceil(answer.total / state.size));
        if (state.page >= pages && answer.total) { state.page = pages - 1; return refreshTable(false); }
        done(answer.rows.map(function (r) { r.id = r.uri; r.pic = null; return r; }));
      });
    }
    return ensureIndex().then(function () {
      applyFilters();
      state.total = state.order.length;
      var start = state.page * state.size, rows = [];
      for (var p = start; p < Math.min(state.total, start + state.size); p++) rows.push(rowOf(state.order[p]));
      done(rows);
    });
  }

  function setUpTable() {
    var meta = V2S.meta;
    function fill(id, names) {
      names.forEach(function (name, i) { $(id).appendChild(el("option", { value: String(i), text: name })); });
    }
    fill("f-prefix", meta.prefixes);
    fill("f-night", meta.nights);
    fill("f-model", meta.models);
    var timer = null;
    function changed() {
      clearTimeout(timer);
      timer = setTimeout(function () { readFilters(); keepInUrl(); refreshTable(true).catch(fail); }, 150);
    }
    $("filters").addEventListener("input", changed);
    $("filters").addEventListener("change", changed);
    $("filters").addEventListener("reset", function () { setTimeout(changed, 0); });
    $("filters").addEventListener("submit", function (e) { e.preventDefault(); changed(); });
    function go(page) { return function () { state.page = page(); refreshTable(false).catch(fail); }; }
    function last() { return Math.max(0, Math.ceil(state.total / state.size) - 1); }
    $("p-first").addEventListener("click", go(function () { return 0; }));
    $("p-prev").addEventListener("click", go(function () { return Math.max(0, state.page - 1); }));
    $("p-next").addEventListener("click", go(function () { return Math.min(last(), state.page + 1); }));
    $("p-last").addEventListener("click", go(last));
    $("p-size").addEventListener("change", function () {
      state.size = +$("p-size").value;
      refreshTable(true).catch(fail);
    });
    document.querySelectorAll("#table th[data-sort]").forEach(function (th) {
      th.addEventListener("click", function () {
        var key = th.getAttribute("data-sort");
        if (key === state.sortKey) state.sortDir = -state.sortDir;
        else { state.sortKey = key; state.sortDir = /score|mp|area/.test(key) ? -1 : 1; }
        keepInUrl();
        refreshTable(true).catch(fail);
      });
    });
    document.querySelector("#table tbody").addEventListener("click", function (e) {
      var tr = e.target.closest("tr");
      if (tr) location.hash = tr.getAttribute("data-link");
    });
  }

  // ------------------------------------------------------------------ overview charts
  function hbars(items, width, markW) {
    var rowH = 18, labelW = 130, plotW = width - labelW - 120 - (markW || 0), h = items.length * rowH + 6;
    var top = Math.max.apply(null, items.map(function (d) { return d.value; }).concat([1e-9]));
    var root = svg("svg", { width: width, height: h, role: "img" });
    items.forEach(function (d, j) {
      var y = 3 + j * rowH, w = Math.max(1, plotW * d.value / top);
      var bar = svg("g", {}, [
        svg("title", { text: d.title }),
        svg("text", { x: labelW - 6, y: y + 12, "text-anchor": "end", text: d.label }),
        svg("rect", { x: labelW, y: y + 2, width: w, height: rowH - 5, "class": "bar" + (d.hot ? " hot" : "") + (d.alert ? " alert" : "") }),
        svg("text", { x: labelW + w + 4, y: y + 12, text: d.text })
      ]);
      if (d.onclick) { bar.style.cursor = "pointer"; bar.addEventListener("click", d.onclick); }
      if (d.mark) {  // e.g. the image threshold changed here: the bars either side do not compare
        bar.appendChild(svg("line", { x1: 0, x2: width, y1: y + 0.5, y2: y + 0.5, "class": "threshold-change" }));
        bar.appendChild(svg("text", { x: width - 2, y: y + 12, "text-anchor": "end", "class": "threshold-change",
                                      text: "\u25C6 " + d.mark }));
      }
      root.appendChild(bar);
    });
    return root;
  }

  function rate(d) { return d.ok ? d.anomalous / d.ok : 0; }
  function rateText(d) {
    return d.ok ? percent(rate(d), 1) + " (" + d.anomalous + "/" + d.ok + ")" : d.errors + " error rows, none scored";
  }

  function histogramChart(hist, thresholds) {
    var W = 640, H = 200, left = 44, bottom = 30, plotW = W - left - 10, plotH = H - bottom - 10;
    var n = hist.counts.length, top = Math.max.apply(null, hist.counts.concat([1]));
    var root = svg("svg", { width: W, height: H, role: "img" });
    function x(v) { return left + plotW * (v - hist.lo) / (hist.hi - hist.lo); }
    hist.counts.forEach(function (c, j) {
      var h = plotH * c / top, lo = hist.lo + (hist.hi - hist.lo) * j / n;
      root.appendChild(svg("rect", { x: left + plotW * j / n + 0.5, y: 10 + plotH - h,
        width: Math.max(1, plotW / n - 1), height: h, "class": "bar" }, [
        svg("title", { text: c + " images with score " + lo.toFixed(4) + " to " +
          (lo + (hist.hi - hist.lo) / n).toFixed(4) })]));
    });
    [hist.lo, (hist.lo + hist.hi) / 2, hist.hi].forEach(function (v, j) {
      root.appendChild(svg("text", { x: x(v), y: H - 12, "text-anchor": ["start", "middle", "end"][j],
        text: v.toFixed(4) }));
    });
    root.appendChild(svg("text", { x: 2, y: 20, text: String(top) }));
    root.appendChild(svg("text", { x: W / 2, y: H - 1, "text-anchor": "middle", text: "image_score" }));
    var outside = [];
    thresholds.forEach(function (t, j) {
      if (t.value < hist.lo || t.value > hist.hi) { outside.push(t.label + " " + sig(t.value)); return; }
      root.appendChild(svg("line", { x1: x(t.value), x2: x(t.value), y1: 10, y2: 10 + plotH, "class": "threshold" },
        [svg("title", { text: t.label + " " + t.value })]));
      root.appendChild(svg("text", { x: x(t.value) + 3, y: 22 + 12 * j, text: t.label + " " + sig(t.value) }));
    });
    var box = el("div", {}, [root]);
    if (outside.length) box.appendChild(el("p", { className: "muted", text: "Outside the range shown: " + outside.join(", ") }));
    return box;
  }

  function listPrefix(j) {
    return function () {
      state.prefix = String(j); state.page = 0;
      if (document.readyState !== "loading") writeFilters();
      location.hash = "#images";
    };
  }

  function renderOverview() {
    var meta = V2S.meta, counts = clear($("counts"));
    Object.keys(meta.counts).forEach(function (name) {
      counts.appendChild(el("div", { className: "card" }, [el("b", { text: String(meta.counts[name]) }), name]));
    });
    clear($("chart-prefix")).appendChild(hbars(meta.per_prefix.map(function (d, j) {
      return { label: d.prefix, value: rate(d), hot: d.anomalous > 0, onclick: listPrefix(j),
               text: rateText(d),
               title: d.prefix + ": " + d.anomalous + " anomalous of " + d.ok + " ok, " + d.errors + " errors" };
    }), 420));
    var alertsOf = function (night) { return (meta.alerts || []).filter(function (a) { return a.night === night; }); };
    var changes = meta.per_night.filter(function (d) { return d.threshold_change; }).length, markW = changes ? 190 : 0;
    clear($("chart-night")).appendChild(hbars(meta.per_night.map(function (d) {
      var marks = alertsOf(d.night).map(function (a) { return "\n" + (a.alert ? "alert: " : "changed: ") + a.line; }).join("");
      return { label: (d.alerts ? "\u26a0 " : "") + d.night, value: rate(d), hot: d.anomalous > 0, alert: d.alerts > 0,
               text: rateText(d), mark: d.threshold_change,
               title: d.night + ": " + d.n + " rows in " + d.runs + " run(s), " + d.anomalous +
                 " anomalous, " + d.errors + " errors" +
                 ((d.thresholds || []).length ? ", image threshold " + d.thresholds.join(", ") : "") + marks };
    }), 420 + markW, markW));
    if (changes) {
      $("chart-night").appendChild(el("p", { className: "legend", id: "threshold-change-note",
        text: "\u25C6 the image threshold changed that night (e.g. after vip2scan calibrate): the flagged " +
              "rates before and after it were set by different thresholds and do not compare." }));
    }
    clear($("chart-hist")).appendChild(histogramChart(meta.histogram, meta.thresholds));
    var shown = (meta.alerts || []).filter(function (a) { return a.alert; }), box = clear($("alerts"));
    if (shown.length) {
      box.appendChild(el("p", { className: "warning", text: shown.length + " anomaly-rate alert(s) (vip2scan alerts OUT lists them):" }));
      box.appendChild(el("ul", {}, shown.map(function (a) { return el("li", { text: a.night + "  " + a.line }); })));
    }
    $("render-note").textContent = served() ? "Pictures: rendered on demand for any object with a map (served). Colours: " + meta.scaling + "." : "Pre-rendered pictures: " + meta.rendered + " of " + meta.n_rows +
      " images (the most anomalous half of --max-images " + meta.max_images + ", then a fixed sample" +
      " of the rest). Any other image's map: vip2scan map " + shellWord(meta.out) + " IMAGE_URI --png map.png. " +
      "Colours: " + meta.scaling + ".";
    var reasons = clear($("error-reasons")), list = clear($("error-list"));
    if (!meta.errors.length) { reasons.appendChild(el("p", { text: "No error rows among the current objects." })); return; }
    reasons.appendChild(el("table", {}, [el("tr", {}, [el("th", { text: "reason" }), el("th", { text: "objects" })])]
      .concat(meta.error_reasons.map(function (r) {
        return el("tr", {}, [el("td", { text: r.reason }), el("td", { className: "num", text: String(r.n) })]);
      }))));
    list.appendChild(el("p", { text: "Error rows (first " + meta.errors.length + "; all of them: status = error in the Images list):" }));
    list.appendChild(el("ul", {}, meta.errors.map(function (e) {
      return el("li", {}, [el("a", { href: "#image/" + encodeURIComponent(e[0]), className: "uri", text: e[2] || e[0] }), ": " + e[1]]);
    })));
  }

  // ------------------------------------------------------------------ one image
  function colourBar(meta, r, pixelThreshold, width) {
    var stops = meta.colours.map(function (c, j) { return c + " " + (100 * j / (meta.colours.length - 1)) + "%"; });
    var bar = el("div", { className: "colourbar", style: "background: linear-gradient(to right, " + stops.join(", ") + ")" });
    function tick(v, label) {
      if (v === null || v === undefined || v < r.lo || v > r.hi) return;
      bar.appendChild(el("div", { className: "tick", title: label, style: "left: " + (100 * (v - r.lo) / (r.hi - r.lo)) + "%" }));
    }
    tick(pixelThreshold, "pixel threshold " + sig(pixelThreshold));
    tick(r.peak, "maximum " + r.peak);
    return el("div", { style: "width: " + width + "px" }, [bar, el("div", { className: "cb-labels" }, [
      el("span", { text: r.lo.toFixed(4) }), el("span", { text: ((r.lo + r.hi) / 2).toFixed(4) }),
      el("span", { text: r.hi.toFixed(4) })])]);
  }

  // The maximum's ring, kept whole inside the picture when the maximum is at its edge.
  function markerPlace(render) {
    var r = 13; // the ring's outer radius and its shadow, in px (explorer.css .marker)
    return "left: clamp(" + r + "px, " + (100 * render.x) + "%, calc(100% - " + r + "px));" +
           "top: clamp(" + r + "px, " + (100 * render.y) + "%, calc(100% - " + r + "px))";
  }

  function historyBlock(meta, entries) {
    var table = el("table", {}, [el("tr", {}, ["night", "run", "status", "score", "anomalous"].map(function (h) {
      return el("th", { text: h });
    }))]);
    entries.forEach(function (h) {
      table.appendChild(el("tr", {}, [el("td", { text: meta.nights[h[0]] }), el("td", { text: h[1] >= 0 ? meta.runs[h[1]].id : "" }),
        el("td", { text: h[2] ? "error" : "ok" }), el("td", { className: "num", text: h[3] === null ? "" : h[3].toFixed(4) }),
        el("td", { text: h[2] ? "" : (h[4] ? "yes" : "no") })]));
    });
    var scored = entries.filter(function (h) { return h[3] !== null; });
    if (scored.length < 2) return table;
    // Axes: the score range on the left, the first and last night below.
    var W = 300, H = 84, left = 50, bottom = 18, plotW = W - left - 8, plotH = H - bottom - 8;
    var lo = Math.min.apply(null, scored.map(function (h) { return h[3]; }));
    var hi = Math.max.apply(null, scored.map(function (h) { return h[3]; })) + 1e-9;
    var pts = scored.map(function (h, j) {
      return (left + plotW * j / (scored.length - 1)).toFixed(1) + "," + (4 + plotH - plotH * (h[3] - lo) / (hi - lo)).toFixed(1);
    });
    var line = svg("svg", { width: W, height: H, role: "img", "class": "sparkline" }, [svg("title", { text: "score across nights" }),
      svg("line", { x1: left - 2, x2: left - 2, y1: 4, y2: 4 + plotH, stroke: "#999" }),
      svg("line", { x1: left - 2, x2: W - 8, y1: 4 + plotH, y2: 4 + plotH, stroke: "#999" }),
      svg("text", { x: left - 5, y: 12, "text-anchor": "end", "class": "axis", text: hi.toFixed(4) }),
      svg("text", { x: left - 5, y: 4 + plotH, "text-anchor": "end", "class": "axis", text: lo.toFixed(4) }),
      svg("text", { x: left, y: H - 3, "class": "axis", text: meta.nights[scored[0][0]] }),
      svg("text", { x: W - 8, y: H - 3, "text-anchor": "end", "class": "axis", text: meta.nights[scored[scored.length - 1][0]] }),
      svg("polyline", { points: pts.join(" "), fill: "none", stroke: "#4477aa", "stroke-width": 2 })]);
    return el("div", {}, [line, table]);
  }

  // Its neighbours in the list: the whole filtered order of the static set, the page shown when served.
  function neighbours(row) {
    if (!served() && state.order) {
      var pos = Array.prototype.indexOf.call(state.order, row.id);
      return [pos > 0 ? rowOf(state.order[pos - 1]) : null, pos >= 0 && pos < state.order.length - 1 ? rowOf(state.order[pos + 1]) : null];
    }
    var at = state.rows.map(function (r) { return r.uri; }).indexOf(row.uri);
    return [at > 0 ? state.rows[at - 1] : null, at >= 0 && at < state.rows.length - 1 ? state.rows[at + 1] : null];
  }

  function renderImage(row, detail) {
    var meta = V2S.meta, view = clear($("view-image"));
    var uri = row.uri, render = detail[5], run = detail[3] >= 0 ? meta.runs[detail[3]] : null;
    var near = neighbours(row);
    var nav = el("p", {}, [el("a", { href: "#images" + filterQuery(), text: "\u2190 back to the list" })]);
    if (near[0]) nav.appendChild(el("a", { href: imageLink(near[0]), id: "img-prev", style: "margin-left: 1em", text: "\u2039 previous" }));
    if (near[1]) nav.appendChild(el("a", { href: imageLink(near[1]), id: "img-next", style: "margin-left: 1em", text: "next \u203a" }));
    view.appendChild(nav);
    view.appendChild(el("h2", {}, [objectLink(uri)]));
    var stats = el("dl", { className: "stats" });
    function stat(name, value) { stats.appendChild(el("dt", { text: name })); stats.appendChild(el("dd", { text: value })); }
    var f = row.f;
    stat("status", f & ERROR ? "error" : (f & ANOMALOUS ? "anomalous" : "ok, not anomalous"));
    if (f & ERROR) stat("reason", detail[0] || "");
    stat("image score", fixed(number(row.sc), 6) + (run && run.threshold !== null ? "  (threshold " + sig(run.threshold) + ")" : ""));
    stat("max pixel", fixed(number(row.mp), 4));
    stat("anomalous area", percent(number(row.ar), 3));
    stat("size", detail[1] && detail[2] ? detail[1] + " x " + detail[2] + " px" : "");
    stat("prefix", meta.prefixes[row.pre]);
    stat("night", meta.nights[row.night]);
    stat("model", meta.models[row.model]);
    stat("run", run ? run.id : "");
    var box = el("div", { className: "detail" });
    if (render) {
      // Small images are shown enlarged (pixelated) to at least DISPLAY_SIDE px.
      var zoom = Math.max(1, DISPLAY_SIDE / Math.max(render.w, render.h));
      var dw = Math.round(render.w * zoom), dh = Math.round(render.h * zoom);
      var heat = el("img", { src: picture(render, "map"), className: zoom > 1 ? "heat zoomed" : "heat", alt: "anomaly map overlay", id: "overlay-heat" });
      var base = render.img ? el("img", { src: picture(render, "image"), alt: "image", width: dw, height: dh, className: zoom > 1 ? "zoomed" : null })
        : el("div", { style: "width:" + dw + "px;height:" + dh + "px;background:#888" });
      var marker = el("div", { className: "marker", id: "peak-marker", title: "maximum of the map",
                               style: markerPlace(render) });
      var slider = el("input", { type: "range", min: 0, max: 100, value: 50, id: "opacity" });
      var showMark = el("input", { type: "checkbox", checked: "checked", id: "show-marker" });
      heat.style.opacity = "0.5";
      slider.addEventListener("input", function () { heat.style.opacity = String(slider.value / 100); });
      showMark.addEventListener("change", function () { marker.hidden = !showMark.checked; });
      box.appendChild(el("figure", {}, [el("figcaption", { text: render.img ? "Image with its anomaly map" : "Anomaly map (the object could not be read now)" }),
        el("div", { className: "stack" }, [base, heat, marker]),
        el("p", {}, [el("label", {}, ["map opacity ", slider]), " ", el("label", {}, [showMark, " mark the maximum"])])]));
      box.appendChild(el("figure", {}, [el("figcaption", { text: "Anomaly map" }),
        el("div", { className: "stack" }, [el("img", { src: picture(render, "map"), alt: "anomaly map", width: dw, height: dh, className: zoom > 1 ? "zoomed" : null }),
          el("div", { className: "marker", style: markerPlace(render) })]),
        colourBar(meta, render, run ? run.pixel_threshold : null, dw),
        el("p", { className: "legend", text: "Colour bar: map values from " + render.lo.toFixed(4) + " to " + render.hi.toFixed(4) +
          " (ticks: the run's pixel threshold when in range, and this map's maximum " + render.peak.toFixed(4) + "). " + meta.scaling +
          ". The same colours from the command line: vip2scan map with --png and --range " + render.lo + ":" + render.hi + "." })]));
    } else {
      box.appendChild(el("p", { className: "legend", text: f & ERROR ? "No map: this row is an error." :
        (served() ? "No map stored for this object. " : "Not pre-rendered (the explorer renders the most anomalous images and a sample; " +
          "vip2scan explore OUT --serve renders any on demand). ") + "Its map: " +
        ["vip2scan", "map", meta.out, uri, "--png", "map.png"].map(shellWord).join(" ") }));
    }
    box.appendChild(el("div", {}, [stats, el("h3", { text: "History across nights" }), historyBlock(meta, detail[4])]));
    view.appendChild(box);
    mark("imageMs");
    say("");
  }

  // An image by its row in the static set (digits) or by its URI (percent-encoded).
  function showImage(ref) {
    var byRow = /^[0-9]+$/.test(ref), uri = null;
    try { uri = byRow ? null : decodeURIComponent(ref); }
    catch (err) { return Promise.reject(new Error("not an object's address: #image/" + ref)); }
    if (served()) {
      if (byRow) return Promise.reject(new Error("no object #" + ref));
      return getJson("api/object?uri=" + encodeURIComponent(uri)).then(function (answer) {
        answer.row.id = answer.row.uri;
        renderImage(answer.row, answer.detail);
      });
    }
    return ensureIndex().then(function (ix) {
      var i = byRow ? +ref : rowOfUri(ix, uri);
      if (!(i >= 0 && i < ix.n)) {
        var view = clear($("view-image"));
        view.appendChild(el("h2", {}, [uri ? objectLink(uri) : el("span", { text: "object #" + ref })]));
        view.appendChild(el("p", { className: "legend", text: "Not in this explorer's table set (the most anomalous objects " +
          "and errors). Every object: vip2scan explore " + shellWord(V2S.meta.out) + " --serve" }));
        say("");
        return;
      }
      if (!state.order) applyFilters();
      var b = ix.b[i];
      return loadScript("data/obj-" + pad5(b) + ".js").then(function () {
        var row = rowOf(i);
        renderImage(row, V2S.chunks[b][row.uri]);
      });
    });
  }

  function rowOfUri(ix, uri) {
    if (!ix.byUri) {
      ix.byUri = new Map();
      for (var i = 0; i < ix.n; i++) ix.byUri.set(uriOf(i), i);
    }
    return ix.byUri.has(uri) ? ix.byUri.get(uri) : -1;
  }

  // ------------------------------------------------------------------ routing
  function show(name) {
    ["overview", "images", "image"].forEach(function (v) { $("view-" + v).hidden = v !== name; });
    $("nav-overview").className = name === "overview" ? "active" : "";
    $("nav-images").className = name !== "overview" ? "active" : "";
  }

  function route() {
    var hash = location.hash || "#overview";
    if (hash.indexOf("#image/") === 0) { show("image"); showImage(hash.slice(7)).catch(fail); }
    else if (hash === "#images" || hash.indexOf("#images?") === 0) {
      if (hash.length > 8) readQuery(hash.slice(8));
      show("images"); writeFilters(); refreshTable(false).catch(fail);
    }
    else { show("overview"); renderOverview(); mark("overviewMs"); say(""); }
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!V2S.meta) { say("error: data/meta.js is missing; rebuild with vip2scan explore OUT"); return; }
    $("lake").textContent = V2S.meta.out + " · " + V2S.meta.n_rows + " objects" + (served() ? " · served" : "");
    if (served()) $("f-rendered").parentNode.hidden = true;  // every picture renders on demand
    setUpTable();
    window.addEventListener("hashchange", route);
    route();
  });
})();
