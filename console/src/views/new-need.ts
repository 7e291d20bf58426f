// A new need: the form SubmitNeed takes, with PreviewMatches run as the officer types (the
// products that would be routed, ranked, with their factors, and why the others are out), and
// an idempotency key per filled-in form, so a double click or a retry submits once.

import { create } from "@bufbuild/protobuf";
import { Channel, Collateral, NeedSchema, Purpose, type Enterprise } from "../gen/finmatch/v1/common_pb";
import { enterprises, financing, problem, Code } from "../api";
import { checked, debounce, field, h, replace } from "../dom";
import { count, isoDay, money, parseRate, parseYuan } from "../format";
import { collateral, factor, ineligibility, purpose, t } from "../i18n";
import { badge, labelled, markFields, showProblem, table } from "../ui";

async function allEnterprises(): Promise<Enterprise[]> {
  const out: Enterprise[] = [];
  let pageToken = "";
  do {
    const page = await enterprises.listEnterprises({ pageSize: 200, pageToken });
    out.push(...page.enterprises);
    pageToken = page.nextPageToken;
  } while (pageToken && out.length < 5000);
  return out;
}

function enumOptions<E extends number>(values: E[], label: (v: E) => string, selected: E): HTMLOptionElement[] {
  return values.map((v) => h("option", { value: v, selected: v === selected }, label(v)));
}

export async function newNeed(main: HTMLElement): Promise<void> {
  const list = await allEnterprises();
  const enterprise = h("select", { name: "enterprise", required: true, id: "need-enterprise" },
    h("option", { value: "" }, t("chooseEnterprise")),
    list.map((e) => h("option", { value: e.id }, `${e.name}（${e.creditCode}）`)));
  const amountEcho = h("span", { class: "muted", id: "amount-echo" });
  const amount = h("input", { name: "amount", inputmode: "decimal", required: true, id: "need-amount", autocomplete: "off" });
  const purposes = [Purpose.WORKING_CAPITAL, Purpose.PAYROLL, Purpose.RAW_MATERIALS, Purpose.EQUIPMENT,
    Purpose.EXPANSION, Purpose.CONVERSION, Purpose.REFINANCING];
  const collaterals = [Collateral.CREDIT, Collateral.GUARANTEE, Collateral.REAL_ESTATE, Collateral.EQUIPMENT,
    Collateral.RECEIVABLES, Collateral.IP_PLEDGE, Collateral.INVENTORY];
  const errors = h("div", { id: "need-errors" });
  const submit = h("button", { type: "submit", id: "need-submit" }, t("submit"));
  const form = h("form", { class: "card need-form", id: "need-form", novalidate: true },
    labelled(t("enterprise"), enterprise, "need.enterprise_id"),
    h("div", { class: "row" },
      h("div", {}, labelled(t("amountYuan"), amount, "need.amount_minor"), amountEcho),
      labelled(t("term"), h("input", { name: "term", type: "number", min: 1, max: 360, required: true, id: "need-term" }), "need.term_months")),
    labelled(t("purpose"), h("select", { name: "purpose", id: "need-purpose" },
      enumOptions(purposes, purpose, Purpose.WORKING_CAPITAL)), "need.purpose"),
    h("fieldset", { "data-field": "need.collateral" }, h("legend", {}, t("collateral")),
      collaterals.map((c) => h("label", { class: "check" },
        h("input", { type: "checkbox", name: "collateral", value: c, checked: c === Collateral.CREDIT }), collateral(c)))),
    h("div", { class: "row" },
      labelled(t("maxRate"), h("input", { name: "maxRate", inputmode: "decimal", id: "need-max-rate", autocomplete: "off" }), "need.max_rate_bps"),
      labelled(t("neededBy"), h("input", { name: "neededBy", type: "date", min: isoDay(), required: true, id: "need-needed-by" }), "need.needed_by")),
    h("label", { class: "check", "data-field": "need.consent_to_share" },
      h("input", { type: "checkbox", name: "consent", value: "yes", checked: true, id: "need-consent" }), t("consent")),
    labelled(t("note"), h("textarea", { name: "note", rows: 2, maxlength: 1000 }), "need.note"),
    errors,
    h("div", { class: "actions" }, submit));
  const preview = h("div", { id: "preview" }, h("p", { class: "muted" }, t("previewHint")));
  replace(main, h("h1", {}, t("newNeedTitle")),
    h("div", { class: "grid2 wide-right" }, form, h("section", { class: "card" }, h("h2", {}, t("preview")), preview)));

  // The key names this filled-in form: it changes when the form does, not on a second click.
  let idempotencyKey = crypto.randomUUID();

  /** The need the form describes, or the fields the console can tell are wrong before asking. */
  const read = (): { need: ReturnType<typeof create<typeof NeedSchema>>; problems: [string, string][] } => {
    const problems: [string, string][] = [];
    const amountMinor = parseYuan(field(form, "amount"));
    if (amountMinor === null && field(form, "amount")) problems.push(["need.amount_minor", t("errAmount")]);
    amountEcho.textContent = amountMinor !== null ? `= ${money(amountMinor)}` : "";
    const term = Number(field(form, "term"));
    if (field(form, "term") && !Number.isInteger(term)) problems.push(["need.term_months", t("errTerm")]);
    const maxRateText = field(form, "maxRate");
    const maxRate = maxRateText ? parseRate(maxRateText) : undefined;
    if (maxRate === null) problems.push(["need.max_rate_bps", t("errRate")]);
    const need = create(NeedSchema, {
      enterpriseId: field(form, "enterprise"),
      amountMinor: amountMinor ?? 0n,
      termMonths: Number.isInteger(term) ? term : 0,
      purpose: Number(field(form, "purpose")),
      collateral: checked(form, "collateral").map(Number),
      maxRateBps: maxRate ?? undefined,
      neededBy: field(form, "neededBy"),
      consentToShare: checked(form, "consent").length > 0,
      channel: Channel.BUREAU,
      note: field(form, "note"),
    });
    return { need, problems };
  };

  let previewRun = 0;
  const runPreview = debounce(async () => {
    const { need, problems } = read();
    markFields(form, problems);
    if (!need.enterpriseId || need.amountMinor === 0n || need.termMonths === 0 || !need.neededBy ||
        problems.length) return;
    const run = ++previewRun;
    try {
      const response = await financing.previewMatches({ subject: { case: "need", value: need }, pageSize: 20 });
      if (run !== previewRun) return;
      replace(errors);
      replace(preview,
        h("p", { id: "preview-counts" },
          `${count(response.eligibleCount)} ${t("eligibleCount")} · ${count(response.ineligibleCount)} ${t("ineligibleCount")}`),
        table([t("bank"), t("product"), t("score"), t("factors")], response.candidates.map((c) => [
          h("span", {}, c.lenderName, " ", c.selected ? badge(t("selected"), "selected") : ""),
          c.productName,
          c.eligible ? String(c.score) : "—",
          c.eligible
            ? h("span", {}, c.factors.map((f) => `${factor(f.name)} +${f.points}`).join(" · "))
            : h("span", { class: "muted" }, c.ineligibleReasons.map((r) => ineligibility(r.code)).join("、")),
        ]), { class: "preview-table" }));
    } catch (err) {
      if (run !== previewRun) return;
      // The preview validates what submit will: its field errors are the form's.
      const p = problem(err);
      if (p.code === Code.InvalidArgument) markFields(form, p.violations.map((v) => [v.field, v.description]));
      else showProblem(errors, err);
    }
  }, 300);

  form.addEventListener("input", () => {
    idempotencyKey = crypto.randomUUID();
    runPreview();
  });
  form.addEventListener("change", () => runPreview());
  let busy = false;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const { need, problems } = read();
    const required: [string, string][] = [];
    if (!need.enterpriseId) required.push(["need.enterprise_id", t("errRequired")]);
    if (!field(form, "amount")) required.push(["need.amount_minor", t("errRequired")]);
    if (!field(form, "term")) required.push(["need.term_months", t("errRequired")]);
    if (!need.neededBy) required.push(["need.needed_by", t("errRequired")]);
    markFields(form, [...problems, ...required]);
    if (problems.length || required.length || busy) return;
    busy = true;
    submit.setAttribute("disabled", "");
    submit.textContent = t("submitting");
    try {
      const response = await financing.submitNeed({ idempotencyKey, need });
      location.hash = `#/need/${response.need?.id ?? ""}`;
    } catch (err) {
      showProblem(errors, err, form);
    } finally {
      busy = false;
      submit.removeAttribute("disabled");
      submit.textContent = t("submit");
    }
  });
}
