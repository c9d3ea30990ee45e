// Predict page: upload images, POST /api/predict, show the class, probability bars and heatmaps.
"use strict";

let lastCsv = null;

function probBars(probs, predicted) {
  const box = el("div", { class: "probs" });
  for (const [c, p] of Object.entries(probs)) {
    const bar = el("div", { class: "bar", style: `width:${(100 * p).toFixed(1)}%` });
    box.append(el("div", { class: "prob" + (c === predicted ? " top" : ""), "data-class": c },
      el("span", { class: "name", text: c, title: c }), el("div", { class: "track" }, bar),
      el("span", { class: "val", text: (100 * p).toFixed(1) + "%" })));
  }
  return box;
}

function heatmaps(items) {
  const box = el("div", { class: "heatmaps" });
  for (const h of items) {
    const list = el("ol");
    for (const p of h.phrases) list.append(el("li", { text: `${p.phrase} (${fmt(p.score, 2)})` }));
    box.append(el("div", { class: "heatmap", "data-class": h.class },
      el("img", { src: h.overlay, alt: `heatmap for ${h.class}` }),
      el("div", { class: "cap", text: h.class }), list));
  }
  return box;
}

function showResults(data) {
  const out = document.getElementById("results");
  out.innerHTML = "";
  let anyMap = false;
  for (const r of data.results) {
    const card = el("div", { class: "result" + (r.error ? " failed" : ""), "data-file": r.file });
    card.append(el("h3", { text: r.file }));
    if (r.error) {
      card.append(el("div", { class: "error", text: r.error }));
    } else {
      card.append(el("div", {}, "Predicted: ", el("span", { class: "predicted", text: r.predicted })));
      card.append(probBars(r.probs, r.predicted));
      if (r.heatmaps) {
        anyMap = true;
        const row = heatmaps(r.heatmaps);
        row.prepend(el("div", { class: "heatmap input" }, el("img", { src: r.input, alt: "input image" }),
          el("div", { class: "cap", text: "input (as the model sees it)" })));
        card.append(row);
      }
    }
    out.append(card);
  }
  document.getElementById("colorbar").hidden = !anyMap;
}

async function classify(ev) {
  ev.preventDefault();
  const files = document.getElementById("files").files;
  if (!files.length) { showMessage("choose at least one image", "error"); return; }
  const fd = new FormData();
  fd.append("model", document.getElementById("model").value);
  for (const f of files) fd.append("files", f);
  const zs = document.getElementById("zero_shot").checked;
  fd.append("zero_shot", zs ? "true" : "false");
  fd.append("explain", document.getElementById("explain").checked ? "true" : "false");
  if (zs) {
    const up = document.getElementById("descriptors_file").files[0];
    const id = document.getElementById("descriptors").value;
    if (up) fd.append("descriptors_file", up); else if (id) fd.append("descriptors", id);
  }
  const btn = document.getElementById("run");
  btn.disabled = true;
  document.getElementById("busy").textContent = `classifying ${files.length} image(s)…`;
  showMessage("");
  try {
    const data = await api("/api/predict", { method: "POST", body: fd });
    lastCsv = data.csv;
    document.getElementById("csv").disabled = false;
    showResults(data);
    const bad = data.results.filter((r) => r.error).length;
    showMessage(`${data.results.length - bad} classified with ${data.model}` + (bad ? `, ${bad} refused` : ""), "info");
  } catch (e) {
    showMessage(e.message, "error");
  } finally {
    btn.disabled = false;
    document.getElementById("busy").textContent = "";
  }
}

function downloadCsv() {
  if (!lastCsv) return;
  const a = el("a", { href: URL.createObjectURL(new Blob([lastCsv], { type: "text/csv" })), download: "predictions.csv" });
  document.body.append(a);
  a.click();
  a.remove();
}

async function init() {
  // Handlers first: a click while the lists below still load must not submit the form natively.
  document.getElementById("zero_shot").addEventListener("change", (e) => { document.getElementById("zs").hidden = !e.target.checked; });
  document.getElementById("form").addEventListener("submit", classify);
  document.getElementById("csv").addEventListener("click", downloadCsv);
  const wanted = new URLSearchParams(location.search).get("model");
  try {
    const models = await fillModels(document.getElementById("model"), wanted);
    if (!models.length) showMessage("no models yet: train one on the Train page", "info");
    await fillDescriptors(document.getElementById("descriptors"));
  } catch (e) { showMessage(e.message, "error"); }
}

init();
