// The console's shell: sign-in, the navigation the caller's role allows, the language switch
// and a hash router (`#/needs/<id>`), so a reload or a shared link opens the same view.

import "./style.css";
import { Role } from "./gen/finmatch/v1/common_pb";
import { probeRole, session, whenUnauthenticated, type Problem } from "./api";
import { h, replace } from "./dom";
import { lang, setLang, t, type Key } from "./i18n";
import { problemBox, showProblem } from "./ui";
import { dashboard } from "./views/dashboard";
import { needList, needPage } from "./views/needs";
import { newNeed } from "./views/new-need";
import { enterpriseList, enterprisePage } from "./views/enterprises";
import { inbox } from "./views/inbox";

/** A view fills `main`; its long-lived work (a watch stream, charts) stops when `signal` aborts. */
type View = (main: HTMLElement, arg: string, signal: AbortSignal) => Promise<void> | void;

interface Route {
  path: string;
  nav?: Key;
  roles: Role[];
  view: View;
}

const BUREAU = [Role.OPERATOR, Role.PORTAL];
const ROUTES: Route[] = [
  { path: "dashboard", nav: "navDashboard", roles: BUREAU, view: dashboard },
  { path: "needs", nav: "navNeeds", roles: BUREAU, view: needList },
  { path: "need", roles: BUREAU, view: needPage },
  { path: "new", nav: "navNewNeed", roles: BUREAU, view: newNeed },
  { path: "enterprises", nav: "navEnterprises", roles: BUREAU, view: enterpriseList },
  { path: "enterprise", roles: BUREAU, view: enterprisePage },
  { path: "inbox", nav: "navInbox", roles: [Role.LENDER], view: inbox },
];

const root = document.getElementById("app")!;
let viewAbort = new AbortController();

function roleName(role: Role): string {
  return t(role === Role.OPERATOR ? "roleOperator" : role === Role.PORTAL ? "rolePortal" : "roleLender");
}

function header(current: string): HTMLElement {
  const links = ROUTES.filter((r) => r.nav && r.roles.includes(session.role)).map((r) =>
    h("a", { href: `#/${r.path}`, class: r.path === current ? "active" : "", "aria-current": r.path === current ? "page" : null }, t(r.nav!)));
  return h("header", { class: "top" },
    h("div", { class: "brand" }, t("appName")),
    h("nav", { "aria-label": "main" }, links),
    h("div", { class: "who" },
      session.token && h("span", { class: "role", "data-role": Role[session.role] }, roleName(session.role)),
      h("button", { type: "button", class: "link", id: "lang", onclick: () => { setLang(lang() === "zh" ? "en" : "zh"); render(); } }, t("language")),
      session.token && h("button", { type: "button", class: "link", id: "sign-out", onclick: () => signOut() }, t("signOut"))));
}

function signInView(notice?: Problem): HTMLElement {
  const errors = h("div", { class: "errors" }, notice && problemBox(notice));
  const token = h("textarea", { name: "token", id: "token", rows: 3, required: true, autocomplete: "off", spellcheck: "false" });
  const button = h("button", { type: "submit" }, t("signIn"));
  const form = h("form", { class: "card sign-in" },
    h("h1", {}, t("appName")),
    h("label", { class: "control" }, h("span", {}, t("tokenLabel")), token),
    h("p", { class: "muted" }, t("tokenHint")),
    errors, button);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.setAttribute("disabled", "");
    button.textContent = t("signingIn");
    const candidate = token.value.trim();
    session.token = candidate;
    signingIn = true;
    try {
      const role = await probeRole();
      session.save(candidate, role);
      location.hash = role === Role.LENDER ? "#/inbox" : "#/dashboard";
      render();
    } catch (err) {
      session.clear();
      showProblem(errors, err);
      button.removeAttribute("disabled");
      button.textContent = t("signIn");
    } finally {
      signingIn = false;
    }
  });
  return form;
}

let signingIn = false;
let signedOutBecause: Problem | undefined;

function signOut(because?: Problem): void {
  session.clear();
  signedOutBecause = because;
  location.hash = "";
  render();
}

whenUnauthenticated((p) => {
  if (!signingIn) signOut(p);
});

function render(): void {
  viewAbort.abort();
  viewAbort = new AbortController();
  document.documentElement.lang = lang() === "zh" ? "zh-CN" : "en";
  document.title = t("appName");
  if (!session.token) {
    replace(root, header(""), h("main", { id: "main" }, signInView(signedOutBecause)));
    return;
  }
  const [, path = "", arg = ""] = /^#\/([^/]*)\/?(.*)$/.exec(location.hash) ?? [];
  const allowed = ROUTES.filter((r) => r.roles.includes(session.role));
  const route = allowed.find((r) => r.path === path) ?? allowed[0];
  const main = h("main", { id: "main", "data-view": route.path });
  replace(root, header(route.path), main);
  Promise.resolve(route.view(main, decodeURIComponent(arg), viewAbort.signal)).catch((err) => {
    const box = h("div");
    main.prepend(box);
    showProblem(box, err);
  });
}

window.addEventListener("hashchange", render);
render();
