// Needs: the list (ListNeeds with its filters, a page at a time) and a need's page: its
// referrals with their score factors, why the other products were out (PreviewMatches on the
// need), its timeline, and withdraw / re-route.

import { create } from "@bufbuild/protobuf";
import { timestampFromDate, timestampMs } from "@bufbuild/protobuf/wkt";
import { NeedStatus, Role, type Need, type Referral, type ScoreFactor } from "../gen/finmatch/v1/common_pb";
import { ListNeedsRequestSchema, type MatchCandidate } from "../gen/finmatch/v1/financing_service_pb";
import { enterprises, financing, session } from "../api";
import { checked, field, h, replace } from "../dom";
import { count, day, money, rate, time } from "../format";
import {
  collateral, declineReason, factor, ineligibility, needStatus, purpose, referralStatus, t, channel,
} from "../i18n";
import { badge, dialog, labelled, loading, pager, showProblem, table, toast } from "../ui";

const OPEN_NEEDS = [NeedStatus.SUBMITTED, NeedStatus.ROUTED, NeedStatus.APPROVED];

/** Enterprise names by id, read once per page view (GetEnterprise). */
const names = new Map<string, Promise<string>>();
export function enterpriseName(id: string): Promise<string> {
  let name = names.get(id);
  if (!name) {
    name = enterprises.getEnterprise({ enterpriseId: id })
      .then((r) => r.enterprise?.name ?? id, () => id.slice(0, 8));
    names.set(id, name);
  }
  return name;
}

export function needBadge(status: NeedStatus): HTMLElement {
  return badge(needStatus(status), NeedStatus[status].toLowerCase());
}

export async function needList(main: HTMLElement, arg: string): Promise<void> {
  const statusBoxes = [NeedStatus.SUBMITTED, NeedStatus.ROUTED, NeedStatus.APPROVED, NeedStatus.FUNDED,
    NeedStatus.UNMATCHED, NeedStatus.WITHDRAWN, NeedStatus.EXPIRED].map((s) =>
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "status", value: s }), needStatus(s)));
  const form = h("form", { class: "card filters", id: "need-filters" },
    h("fieldset", { "data-field": "statuses" }, h("legend", {}, t("status")), statusBoxes),
    labelled(t("regionPrefix"), h("input", { name: "region", maxlength: 6, size: 8 }), "region_prefix"),
    labelled(t("industryPrefix"), h("input", { name: "industry", maxlength: 5, size: 8 }), "industry_prefix"),
    labelled(t("createdFrom"), h("input", { type: "date", name: "from" }), "create_time_from"),
    labelled(t("createdTo"), h("input", { type: "date", name: "to" }), "create_time_to"),
    h("input", { type: "hidden", name: "enterprise", value: arg }),
    h("button", { type: "submit" }, t("apply")));
  const errors = h("div");
  const list = h("div", {}, loading());
  const pages = pager(async (token) => {
    const request = create(ListNeedsRequestSchema, {
      pageSize: 20,
      pageToken: token,
      statuses: checked(form, "status").map(Number),
      enterpriseId: field(form, "enterprise"),
      regionPrefix: field(form, "region"),
      industryPrefix: field(form, "industry"),
    });
    const from = field(form, "from");
    const to = field(form, "to");
    if (from) request.createTimeFrom = timestampFromDate(new Date(`${from}T00:00:00`));
    if (to) request.createTimeTo = timestampFromDate(new Date(new Date(`${to}T00:00:00`).getTime() + 86_400_000));
    try {
      const response = await financing.listNeeds(request);
      replace(errors);
      replace(list, await needTable(response.needs));
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
  replace(main, h("h1", {}, t("navNeeds")), form, errors, h("section", { class: "card" }, list, pages.el));
  await pages.start();
}

export async function needTable(needs: Need[]): Promise<HTMLElement> {
  const rows = await Promise.all(needs.map(async (n) => [
    h("a", { href: `#/need/${n.id}`, class: "need-link", "data-need": n.id }, await enterpriseName(n.enterpriseId)),
    money(n.amountMinor),
    `${n.termMonths} ${t("months")}`,
    purpose(n.purpose),
    needBadge(n.status),
    time(n.createTime),
  ]));
  return table([t("enterprise"), t("amount"), t("term"), t("purpose"), t("status"), t("created")], rows,
    { class: "needs-table" });
}

function factorList(factors: ScoreFactor[]): HTMLElement {
  return h("ul", { class: "factors" }, factors.map((f) =>
    h("li", {}, h("span", { class: "factor-name" }, factor(f.name)), " ",
      h("span", { class: "factor-points" }, `+${f.points}`),
      f.note && h("span", { class: "muted" }, ` · ${f.note}`))));
}

function outcome(r: Referral): string {
  if (r.approvedAmountMinor !== undefined) {
    const terms = `${money(r.approvedAmountMinor)} · ${rate(r.approvedRateBps ?? 0)} · ${r.approvedTermMonths ?? 0} ${t("months")}`;
    return r.disbursedMinor > 0n ? `${terms} · ${t("disbursed")} ${money(r.disbursedMinor)}` : terms;
  }
  if (r.declineReason) return `${declineReason(r.declineReason)}${r.declineNote ? `: ${r.declineNote}` : ""}`;
  if (r.infoRequestMessage) return `${t("infoRequested")}: ${r.infoRequestMessage}`;
  return "";
}

function referralTable(referrals: Referral[], lenderNames: Map<string, string>, productNames: Map<string, string>): HTMLElement {
  return table([t("bank"), t("product"), t("score"), t("factors"), t("status"), t("deadline"), t("outcome")],
    referrals.map((r) => [
      lenderNames.get(r.lenderId) ?? r.lenderId.slice(0, 8),
      productNames.get(r.productId) ?? r.productId.slice(0, 8),
      String(r.score),
      factorList(r.factors),
      badge(referralStatus(r.status), "referral"),
      time(r.slaDeadline),
      outcome(r),
    ]), { class: "referrals-table" });
}

/** What happened to the need, in order, from the need and its referrals' own times. */
function timeline(need: Need, referrals: Referral[], lenderNames: Map<string, string>): HTMLElement {
  type Entry = { at: bigint; text: string };
  const entries: Entry[] = [];
  const at = (ts: Parameters<typeof timestampMs>[0] | undefined) => (ts ? BigInt(timestampMs(ts)) : 0n);
  entries.push({ at: at(need.createTime), text: t("timelineSubmitted") });
  for (const r of referrals) {
    const bank = lenderNames.get(r.lenderId) ?? r.lenderId.slice(0, 8);
    entries.push({ at: at(r.createTime), text: `${t("timelineRouted")} ${bank}` });
    if (at(r.updateTime) > at(r.createTime)) {
      entries.push({ at: at(r.updateTime), text: `${bank}: ${referralStatus(r.status)}` });
    }
  }
  entries.sort((a, b) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0));
  return h("ol", { class: "timeline" }, entries.map((e) =>
    h("li", {}, h("time", {}, time({ seconds: e.at / 1000n, nanos: 0 } as never)), " ", e.text)));
}

function candidateRow(c: MatchCandidate): (Node | string)[] {
  return [
    c.lenderName, c.productName,
    c.eligible ? String(c.score) : "—",
    c.eligible
      ? factorList(c.factors)
      : h("ul", { class: "reasons" }, c.ineligibleReasons.map((r) =>
        h("li", {}, ineligibility(r.code), r.detail && h("span", { class: "muted" }, ` · ${r.detail}`)))),
  ];
}

export async function needPage(main: HTMLElement, needId: string): Promise<void> {
  replace(main, loading());
  const { need, referrals } = await financing.getNeed({ needId });
  if (!need) return;
  // The first page of the preview names the lenders and products the referrals point at.
  const preview = await financing.previewMatches({ subject: { case: "needId", value: needId }, pageSize: 50 });
  const lenderNames = new Map<string, string>();
  const productNames = new Map<string, string>();
  for (const c of preview.candidates) {
    lenderNames.set(c.lenderId, c.lenderName);
    productNames.set(c.productId, c.productName);
  }
  const name = await enterpriseName(need.enterpriseId);
  const errors = h("div");
  const actions = h("div", { class: "actions" });
  if (OPEN_NEEDS.includes(need.status)) {
    actions.append(h("button", { type: "button", class: "danger", id: "withdraw", onclick: () => withdraw(need.id) }, t("withdraw")));
  }
  if (session.role === Role.OPERATOR && [NeedStatus.SUBMITTED, NeedStatus.ROUTED].includes(need.status)) {
    actions.append(h("button", { type: "button", class: "secondary", id: "reroute", onclick: () => reroute(need.id, errors) }, t("reroute")));
  }

  const details = h("dl", { class: "details" },
    h("dt", {}, t("enterprise")), h("dd", {}, h("a", { href: `#/enterprise/${need.enterpriseId}` }, name)),
    h("dt", {}, t("amount")), h("dd", { "data-amount": String(need.amountMinor) }, money(need.amountMinor)),
    h("dt", {}, t("term")), h("dd", {}, `${need.termMonths} ${t("months")}`),
    h("dt", {}, t("purpose")), h("dd", {}, purpose(need.purpose)),
    h("dt", {}, t("collateral")), h("dd", {}, need.collateral.map(collateral).join("、") || "—"),
    h("dt", {}, t("maxRate")), h("dd", {}, need.maxRateBps === undefined ? "—" : rate(need.maxRateBps)),
    h("dt", {}, t("neededBy")), h("dd", {}, need.neededBy ? day(need.neededBy) : "—"),
    h("dt", {}, t("channel")), h("dd", {}, channel(need.channel)),
    h("dt", {}, t("fundedAmount")), h("dd", {}, money(need.fundedMinor)),
    h("dt", {}, t("created")), h("dd", {}, time(need.createTime)),
    need.note && [h("dt", {}, t("note")), h("dd", {}, need.note)]);

  const ineligible = h("div", { id: "ineligible" });
  const shown = preview.candidates.filter((c) => !c.eligible);
  let token = preview.nextPageToken;
  const more = h("button", { type: "button", class: "secondary" }, t("showMore"));
  const drawIneligible = () => {
    replace(ineligible, table([t("bank"), t("product"), t("score"), t("ineligibleTitle")], shown.map(candidateRow),
      { class: "ineligible-table" }));
    more.toggleAttribute("hidden", !token);
  };
  more.addEventListener("click", async () => {
    const page = await financing.previewMatches({ subject: { case: "needId", value: needId }, pageSize: 50, pageToken: token });
    shown.push(...page.candidates.filter((c) => !c.eligible));
    token = page.nextPageToken;
    drawIneligible();
  });
  drawIneligible();

  replace(main,
    h("h1", {}, `${t("needTitle")} · ${name} `, needBadge(need.status)),
    errors, actions,
    h("div", { class: "grid2" },
      h("section", { class: "card" }, details),
      h("section", { class: "card" }, h("h2", {}, t("timeline")), timeline(need, referrals, lenderNames))),
    h("section", { class: "card", id: "referrals" }, h("h2", {}, `${t("referrals")} · ${t("explanation")}`),
      referralTable(referrals, lenderNames, productNames)),
    h("section", { class: "card" },
      h("h2", {}, t("ineligibleTitle")),
      h("p", { class: "muted", id: "candidate-counts" },
        `${count(preview.eligibleCount)} ${t("eligibleCount")} · ${count(preview.ineligibleCount)} ${t("ineligibleCount")}`),
      ineligible, more));
}

function withdraw(needId: string): void {
  const reason = h("textarea", { name: "reason", rows: 2, required: true, maxlength: 500 });
  dialog(t("withdraw"), [h("p", {}, t("withdrawConfirm")), labelled(t("withdrawReason"), reason, "reason")], t("confirm"),
    async (form) => {
      await financing.withdrawNeed({ needId, reason: field(form, "reason") });
      toast(t("done"));
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    });
}

function reroute(needId: string, errors: HTMLElement): void {
  dialog(t("reroute"), [h("p", {}, t("rerouteConfirm"))], t("confirm"), async () => {
    try {
      await financing.rerouteNeed({ needId });
      toast(t("done"));
      window.dispatchEvent(new HashChangeEvent("hashchange"));
    } catch (err) {
      showProblem(errors, err);
      throw err;
    }
  });
}
