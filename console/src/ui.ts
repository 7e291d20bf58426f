// Pieces every view uses: error boxes that say what to do, field errors next to their fields,
// pagers, dialogs, badges.

import { Code, problem, type Problem } from "./api";
import { h, replace } from "./dom";
import { t, type Key } from "./i18n";

const HEADLINE: Partial<Record<Code, Key>> = {
  [Code.InvalidArgument]: "errInvalid",
  [Code.Unauthenticated]: "errUnauthenticated",
  [Code.PermissionDenied]: "errDenied",
  [Code.NotFound]: "errNotFound",
  [Code.Aborted]: "errConflict",
  [Code.AlreadyExists]: "errConflict",
  [Code.FailedPrecondition]: "errPrecondition",
  [Code.Unavailable]: "errUnavailable",
  [Code.ResourceExhausted]: "errExhausted",
};

/** An alert with what a person can do about it, the API's own words, and its field details. */
export function problemBox(p: Problem): HTMLElement {
  return h("div", { class: "problem", role: "alert", "data-code": Code[p.code] },
    h("strong", {}, t(HEADLINE[p.code] ?? "errOther")),
    " ",
    h("span", { class: "problem-message" }, p.message),
    p.violations.length > 0 && h("ul", {},
      p.violations.map((v) => h("li", {}, h("code", {}, v.field), " ", v.description))),
  );
}

/**
 * Shows `err` in `box` and puts each field violation next to the control whose `data-field`
 * names that field path (e.g. `need.amount_minor`); returns the problem.
 */
export function showProblem(box: Element, err: unknown, form?: HTMLElement): Problem {
  const p = problem(err);
  replace(box, problemBox(p));
  if (form) markFields(form, p.violations.map((v) => [v.field, v.description]));
  return p;
}

/** Puts messages next to the controls of `form` that they concern; clears the old ones. */
export function markFields(form: HTMLElement, errors: [field: string, message: string][]): void {
  for (const old of form.querySelectorAll(".field-error")) old.remove();
  for (const old of form.querySelectorAll("[aria-invalid]")) old.removeAttribute("aria-invalid");
  for (const [path, message] of errors) {
    const target = fieldFor(form, path);
    if (!target) continue;
    target.setAttribute("aria-invalid", "true");
    const note = h("div", { class: "field-error", role: "alert", "data-error-for": path }, message);
    (target.closest("label") ?? target).after(note);
  }
}

function fieldFor(form: HTMLElement, path: string): Element | null {
  // The longest registered path that starts the violation's path: `need.collateral[1]` lands on
  // the collateral group.
  let best: Element | null = null;
  let bestLength = -1;
  for (const el of form.querySelectorAll("[data-field]")) {
    const name = el.getAttribute("data-field") ?? "";
    if ((path === name || path.startsWith(`${name}.`) || path.startsWith(`${name}[`)) &&
        name.length > bestLength) {
      best = el;
      bestLength = name.length;
    }
  }
  return best;
}

/** A labelled control; `path` is the API field it fills, where violations are shown. */
export function labelled(text: string, control: HTMLElement, path?: string): HTMLLabelElement {
  if (path) control.setAttribute("data-field", path);
  return h("label", { class: "control" }, h("span", {}, text), control);
}

export function badge(text: string, kind: string): HTMLElement {
  return h("span", { class: `badge badge-${kind}` }, text);
}

export function loading(): HTMLElement {
  return h("p", { class: "muted" }, t("loading"));
}

/** A table whose rows come from `rows`; an empty list says so. */
export function table(head: string[], rows: (Node | string)[][], attrs: Record<string, string> = {}): HTMLElement {
  if (rows.length === 0) return h("p", { class: "muted" }, t("none"));
  return h("table", attrs,
    h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

/**
 * AIP-158 paging: the tokens of the pages seen so far, so "previous" needs no server support.
 * `load(token)` fetches one page and returns its next_page_token.
 */
export function pager(load: (token: string) => Promise<string>): { el: HTMLElement; start: () => Promise<void> } {
  const tokens: string[] = [""];
  let index = 0;
  let next = "";
  const prev = h("button", { type: "button", class: "secondary" }, t("prev"));
  const nextBtn = h("button", { type: "button", class: "secondary" }, t("next"));
  const where = h("span", { class: "muted" });
  const go = async (i: number) => {
    index = i;
    next = await load(tokens[i]);
    if (next && tokens.length === i + 1) tokens.push(next);
    prev.toggleAttribute("disabled", index === 0);
    nextBtn.toggleAttribute("disabled", !next);
    where.textContent = `${index + 1}`;
  };
  prev.addEventListener("click", () => void go(index - 1));
  nextBtn.addEventListener("click", () => void go(index + 1));
  return {
    el: h("div", { class: "pager" }, prev, where, nextBtn),
    start: () => {
      tokens.length = 1;
      return go(0);
    },
  };
}

/**
 * A modal dialog with `body` and a confirm button; `onConfirm` runs on submit and the dialog
 * closes when it resolves. An error it throws is shown in the dialog, with field errors marked.
 */
export function dialog(title: string, body: HTMLElement[], confirmText: string,
                       onConfirm: (form: HTMLFormElement) => Promise<void>): HTMLDialogElement {
  const errors = h("div", { class: "dialog-errors" });
  const confirm = h("button", { type: "submit" }, confirmText);
  // novalidate: the API's own field violations are shown next to the fields, in its words.
  const form = h("form", { method: "dialog", novalidate: true },
    h("h2", {}, title), ...body, errors,
    h("div", { class: "actions" },
      h("button", { type: "button", class: "secondary", onclick: () => d.close() }, t("cancel")),
      confirm));
  const d = h("dialog", { class: "dialog" }, form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    confirm.setAttribute("disabled", "");
    try {
      await onConfirm(form);
      d.close();
    } catch (err) {
      showProblem(errors, err, form);
    } finally {
      confirm.removeAttribute("disabled");
    }
  });
  d.addEventListener("close", () => d.remove());
  document.body.append(d);
  d.showModal();
  return d;
}

/** A short confirmation that fades away. */
export function toast(text: string): void {
  const el = h("div", { class: "toast", role: "status" }, text);
  document.body.append(el);
  setTimeout(() => el.remove(), 3000);
}
