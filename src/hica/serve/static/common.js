// Shared helpers of the hica serve pages: the JSON API and small DOM builders.
"use strict";

async function api(path, options) {
  const res = await fetch(path, options);
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const detail = body && body.detail ? body.detail : `${res.status} ${res.statusText}`;
    const err = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    err.status = res.status;
    throw err;
  }
  return body;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

function showMessage(text, kind) {
  const m = document.getElementById("message");
  m.textContent = text || "";
  m.className = "message" + (text ? " " + (kind || "info") : "");
}

function fmt(v, digits) {
  return typeof v === "number" ? v.toFixed(digits === undefined ? 3 : digits) : String(v);
}

async function fillModels(select, wanted) {
  const data = await api("/api/models");
  select.innerHTML = "";
  for (const m of data.models) select.append(el("option", { value: m.name, text: `${m.name} (${m.classes.join(", ")})` }));
  if (wanted && data.models.some((m) => m.name === wanted)) select.value = wanted;
  return data.models;
}

async function fillDescriptors(select) {
  const data = await api("/api/descriptors");
  for (const d of data.descriptors) select.append(el("option", { value: d.id, text: `${d.id}: ${d.classes.join(", ")}` }));
  return data.descriptors;
}
