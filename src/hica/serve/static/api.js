// API page: the endpoints of /openapi.json with their parameters and form fields (rendered here, offline).
"use strict";

function schemaOf(spec, s) {
  if (s && s.$ref) return spec.components.schemas[s.$ref.split("/").pop()];
  return s || {};
}

function typeText(s) {
  if (!s) return "";
  if (s.anyOf) return s.anyOf.map(typeText).filter((t) => t !== "null").join(" | ");
  if (s.type === "array") return `list of ${typeText(s.items)}`;
  if (s.format === "binary" || s.contentMediaType) return "file";
  return s.type || "";
}

function fields(rows) {
  const t = el("table", { class: "fields" });
  t.append(el("tr", {}, el("th", { text: "name" }), el("th", { text: "in" }), el("th", { text: "type" }),
    el("th", { text: "required" }), el("th", { text: "description" })));
  for (const r of rows) t.append(el("tr", {}, el("td", {}, el("code", { text: r.name })), el("td", { text: r.where }),
    el("td", { text: r.type }), el("td", { text: r.required ? "yes" : "" }), el("td", { text: r.description || "" })));
  return t;
}

async function init() {
  try {
    const spec = await api("/openapi.json");
    const box = document.getElementById("endpoints");
    for (const [path, ops] of Object.entries(spec.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const rows = (op.parameters || []).map((p) => ({ name: p.name, where: p.in, type: typeText(p.schema),
          required: p.required, description: p.description || (p.schema && p.schema.description) }));
        const body = op.requestBody && op.requestBody.content;
        if (body) {
          const [kind, media] = Object.entries(body)[0];
          const s = schemaOf(spec, media.schema);
          for (const [name, prop] of Object.entries(s.properties || {})) {
            rows.push({ name, where: kind.includes("multipart") ? "form" : "body", type: typeText(prop),
              required: (s.required || []).includes(name), description: prop.description });
          }
        }
        box.append(el("div", { class: "card endpoint", "data-path": path },
          el("h2", {}, el("span", { class: `method ${method}`, text: method.toUpperCase() }), " ", el("code", { text: path })),
          el("p", { text: op.summary || "" }), rows.length ? fields(rows) : el("p", { class: "muted", text: "no parameters" })));
      }
    }
  } catch (e) { showMessage(e.message, "error"); }
}

init();
