// Models page: one card per model from GET /api/models (the model cards written at training time).
"use strict";

function metricsTable(metrics) {
  const keys = ["accuracy", "balanced_accuracy", "macro_f1", "auc", "n"];
  const heads = ["accuracy", "balanced acc.", "macro F1", "AUC", "images"];
  const t = el("table");
  t.append(el("tr", {}, el("th", { text: "" }), ...heads.map((h) => el("th", { text: h }))));
  let rows = 0;
  for (const split of ["validation", "test"]) {
    const m = metrics[split];
    if (!m) continue;
    rows += 1;
    t.append(el("tr", {}, el("td", { text: split }), ...keys.map((k) => el("td", { text: m[k] === undefined || m[k] === null ? "–" : fmt(m[k], k === "n" ? 0 : 3) }))));
  }
  return rows ? t : el("span", { class: "muted", text: "not measured" });
}

function card(m) {
  const dl = el("dl");
  const add = (k, v) => dl.append(el("dt", { text: k }), el("dd", {}, v));
  add("classes", m.classes.join(", "));
  add("training data", String(m.training_data || "–"));
  add("K, seed", `K=${m.k ?? "–"}, seed ${m.seed ?? "–"}`);
  add("encoder", `${m.encoder.name || "–"}` + (m.encoder.lineage ? ` (${m.encoder.lineage})` : ""));
  add("ROI source", String(m.roi_source || "–"));
  add("test-time augmentation", m.tta === "crops" ? "image + five crops, embeddings averaged" : String(m.tta || "none"));
  add("metrics", metricsTable(m.metrics));
  if (m.metric_notes.length) add("metric notes", el("ul", {}, ...m.metric_notes.map((t) => el("li", { text: t }))));
  add("intended use", m.intended_use);
  add("limits", el("details", {}, el("summary", { text: `${m.limits.length} known limits` }),
    el("ul", {}, ...m.limits.map((t) => el("li", { text: t })))));
  add("model card", m.card);
  return el("div", { class: "card", "data-model": m.name },
    el("h2", { text: m.name }), dl,
    el("p", {}, el("a", { href: `/predict?model=${encodeURIComponent(m.name)}`, text: "predict with this model" })));
}

async function init() {
  try {
    const { models } = await api("/api/models");
    const box = document.getElementById("cards");
    if (!models.length) showMessage("no models yet: train one on the Train page", "info");
    for (const m of models) box.append(card(m));
  } catch (e) { showMessage(e.message, "error"); }
}

init();
