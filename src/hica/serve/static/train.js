// Train page: choose classes and images, POST /api/jobs, and follow every job's progress (kept by the server).
"use strict";

function classRows(classes) {
  const box = document.getElementById("classes");
  box.innerHTML = "";
  for (const c of classes) {
    const count = el("span", { class: "count", text: "0 images" });
    const imgs = el("input", { type: "file", multiple: "", accept: ".png,.jpg,.jpeg,.dcm", class: "images", "aria-label": `images of ${c.key}` });
    const masks = el("input", { type: "file", multiple: "", accept: ".png", class: "masks", "aria-label": `masks of ${c.key}` });
    imgs.addEventListener("change", () => { count.textContent = `${imgs.files.length} images`; });
    box.append(el("div", { class: "class-row", "data-class": c.key },
      el("label", { class: "inline" }, el("input", { type: "checkbox", class: "use", checked: "" }), `${c.name} (${c.key})`),
      el("label", {}, "images", imgs), el("label", {}, "masks (optional)", masks), count));
  }
}

let classesRequest = 0;
async function loadClasses() {
  const mine = ++classesRequest;  // only the latest choice is shown, whichever answer comes last
  const up = document.getElementById("descriptors_file").files[0];
  try {
    let data;
    if (up) {
      const fd = new FormData();
      fd.append("descriptors_file", up);
      data = await api("/api/descriptors/check", { method: "POST", body: fd });
    } else {
      data = await api(`/api/descriptors/${encodeURIComponent(document.getElementById("descriptors").value)}`);
    }
    if (mine !== classesRequest) return;
    classRows(data.classes);
    showMessage("");
  } catch (e) { if (mine === classesRequest) showMessage(e.message, "error"); }
}

async function start(ev) {
  ev.preventDefault();
  const fd = new FormData();
  fd.append("model", document.getElementById("name").value.trim());
  const up = document.getElementById("descriptors_file").files[0];
  if (up) fd.append("descriptors_file", up); else fd.append("descriptors", document.getElementById("descriptors").value);
  for (const id of ["k", "steps", "seed"]) fd.append(id, document.getElementById(id).value);
  for (const row of document.querySelectorAll(".class-row")) {
    if (!row.querySelector(".use").checked) continue;
    const c = row.dataset.class;
    fd.append("classes", c);
    for (const f of row.querySelector(".images").files) { fd.append("files", f); fd.append("labels", c); }
    for (const f of row.querySelector(".masks").files) fd.append("masks", f);
  }
  const btn = document.getElementById("start");
  btn.disabled = true;
  showMessage("uploading…", "info");
  try {
    const job = await api("/api/jobs", { method: "POST", body: fd });
    showMessage(`job ${job.id} started for model ${job.model}`, "info");
    await refresh();
  } catch (e) {
    showMessage(e.message, "error");
  } finally { btn.disabled = false; }
}

function jobCard(j) {
  const pct = Math.round(100 * j.progress);
  const card = el("div", { class: "job", "data-job": j.id, "data-state": j.state });
  const head = el("div", { class: "head" }, el("strong", { text: j.model }),
    el("span", { class: `state ${j.state}`, text: j.state }),
    el("span", { class: "muted", text: `K=${j.k} · classes ${(j.classes || []).join(", ")} · job ${j.id}` }));
  if (["preparing", "queued", "running"].includes(j.state)) {
    const b = el("button", { type: "button", class: "secondary cancel", text: "Cancel" });
    b.addEventListener("click", async () => {
      try { await api(`/api/jobs/${j.id}/cancel`, { method: "POST" }); await refresh(); } catch (e) { showMessage(e.message, "error"); }
    });
    head.append(b);
  }
  card.append(head, el("div", { class: "progress", role: "progressbar", "aria-valuenow": String(pct), "aria-valuemin": "0", "aria-valuemax": "100" },
    el("div", { style: `width:${pct}%` })));
  let detail = `${pct}% · ${j.phase || ""}` + (j.state === "running" ? ` · step ${j.step}/${j.steps}` : "");
  if (j.message) detail += ` · ${j.message}`;
  card.append(el("div", { class: "detail", text: detail }));
  if (j.state === "done") {
    const m = j.metrics || {};
    const txt = Object.keys(m).length ? `held-out uploads: accuracy ${fmt(m.accuracy)}, macro F1 ${fmt(m.macro_f1)}` : "";
    card.append(el("div", { class: "detail" }, txt + " ", el("a", { href: `/predict?model=${encodeURIComponent(j.model)}`, text: "predict with it" }),
      " · ", el("a", { href: "/models", text: "model card" })));
  }
  return card;
}

let timer = null;
async function refresh() {
  try {
    const { jobs } = await api("/api/jobs");
    const box = document.getElementById("jobs");
    box.innerHTML = "";
    if (!jobs.length) box.append(el("p", { class: "muted", text: "no training jobs yet" }));
    for (const j of jobs.slice().reverse()) box.append(jobCard(j));
    const active = jobs.some((j) => ["preparing", "queued", "running"].includes(j.state));
    clearTimeout(timer);
    timer = setTimeout(refresh, active ? 1000 : 5000);
  } catch (e) {
    showMessage(e.message, "error");
    timer = setTimeout(refresh, 5000);
  }
}

async function init() {
  // Handlers first: a click while the lists below still load must not submit the form natively.
  document.getElementById("descriptors").addEventListener("change", loadClasses);
  document.getElementById("descriptors_file").addEventListener("change", loadClasses);
  document.getElementById("form").addEventListener("submit", start);
  refresh();
  try {
    await fillDescriptors(document.getElementById("descriptors"));
    await loadClasses();
  } catch (e) { showMessage(e.message, "error"); }
}

init();
