// Enterprises: the list (ListEnterprises, by list membership, region and industry) and an
// enterprise's page with its designations and its needs.

import { enterprises, financing } from "../api";
import { field, h, replace } from "../dom";
import { count, day, money } from "../format";
import { listName, size, t } from "../i18n";
import { labelled, loading, pager, showProblem, table } from "../ui";
import { needTable } from "./needs";

const LISTS = ["NATIONAL_KEY_SUPPLY", "PROVINCIAL_KEY"];

export async function enterpriseList(main: HTMLElement): Promise<void> {
  const form = h("form", { class: "card filters", id: "enterprise-filters" },
    labelled(t("listCode"), h("select", { name: "list", id: "enterprise-list" },
      h("option", { value: "" }, t("allLists")),
      LISTS.map((code) => h("option", { value: code }, listName(code)))), "list_code"),
    labelled(t("regionPrefix"), h("input", { name: "region", maxlength: 6, size: 8 }), "region_prefix"),
    labelled(t("industryPrefix"), h("input", { name: "industry", maxlength: 5, size: 8 }), "industry_prefix"),
    h("button", { type: "submit" }, t("apply")));
  const errors = h("div");
  const list = h("div", {}, loading());
  const pages = pager(async (pageToken) => {
    try {
      const response = await enterprises.listEnterprises({
        pageSize: 20, pageToken,
        listCode: field(form, "list"), regionPrefix: field(form, "region"), industryPrefix: field(form, "industry"),
      });
      replace(errors);
      replace(list, table([t("name"), t("creditCode"), t("region"), t("industry"), t("size"), t("designations")],
        response.enterprises.map((e) => [
          h("a", { href: `#/enterprise/${e.id}`, class: "enterprise-link" }, e.name),
          e.creditCode, e.regionCode, e.industryCode, size(e.size),
          e.designations.map((d) => listName(d.listCode)).join("、"),
        ]), { class: "enterprises-table" }));
      return response.nextPageToken;
    } catch (err) {
      showProblem(errors, err, form);
      return "";
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    void pages.start();
  });
  replace(main, h("h1", {}, t("navEnterprises")), form, errors, h("section", { class: "card" }, list, pages.el));
  await pages.start();
}

export async function enterprisePage(main: HTMLElement, enterpriseId: string): Promise<void> {
  replace(main, loading());
  const { enterprise: e } = await enterprises.getEnterprise({ enterpriseId });
  if (!e) return;
  const needs = await financing.listNeeds({ enterpriseId, pageSize: 50 });
  replace(main,
    h("h1", {}, e.name),
    h("div", { class: "grid2" },
      h("section", { class: "card" }, h("dl", { class: "details" },
        h("dt", {}, t("creditCode")), h("dd", {}, e.creditCode),
        h("dt", {}, t("region")), h("dd", {}, e.regionCode),
        h("dt", {}, t("industry")), h("dd", {}, e.industryCode),
        h("dt", {}, t("size")), h("dd", {}, `${size(e.size)}${e.aboveDesignatedSize ? ` · ${t("aboveDesignatedSize")}` : ""}`),
        h("dt", {}, t("employees")), h("dd", {}, count(e.employees)),
        h("dt", {}, t("revenue")), h("dd", {}, money(e.annualRevenueMinor)),
        h("dt", {}, t("contact")), h("dd", {}, [e.contactName, e.contactPhone].filter(Boolean).join(" · ") || "—"))),
      h("section", { class: "card" }, h("h2", {}, t("designations")),
        table([t("listCode"), t("grantedOn"), t("expiresOn"), t("reference")], e.designations.map((d) => [
          listName(d.listCode), day(d.grantedOn), d.expiresOn ? day(d.expiresOn) : "—", d.reference,
        ]), { class: "designations-table" }))),
    h("section", { class: "card" }, h("h2", {}, t("navNeeds")), await needTable(needs.needs),
      needs.nextPageToken && h("a", { href: `#/needs/${enterpriseId}` }, t("showMore"))));
}
